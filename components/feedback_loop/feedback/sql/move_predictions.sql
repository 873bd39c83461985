INSERT INTO {predictions}
    (id, created_at, model_name, model_version, features, predicted_label, predicted_value, confidence, latency_ms, user_id, consent)
SELECT id, created_at, model_name, model_version, features, predicted_label, predicted_value, confidence, latency_ms, user_id, consent
FROM capture_predictions
ON CONFLICT (id) DO NOTHING
