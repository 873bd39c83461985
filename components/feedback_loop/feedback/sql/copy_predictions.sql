COPY {table}
    (id, created_at, model_name, model_version, features, predicted_label, predicted_value, confidence, latency_ms, user_id, consent)
FROM STDIN WITH (FORMAT csv)
