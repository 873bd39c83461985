-- Exclusions that are no row of the extract: the window's non-consenting predictions, the
-- predictions and answers stamped after the horizon (clock skew), and answers to no known prediction.
SELECT
    (SELECT count(*) FROM {predictions}
      WHERE model_name = {model} AND NOT consent AND created_at > {start} AND created_at <= {end}),
    (SELECT count(*) FROM {predictions} WHERE model_name = {model} AND created_at > {horizon})
  + (SELECT count(*) FROM {feedback} f JOIN {predictions} p ON p.id = f.prediction_id
      WHERE f.created_at > {horizon} AND p.model_name = {model} AND p.consent
        AND p.created_at > {start} AND p.created_at <= {end}),
    (SELECT count(*) FROM {feedback} f
      WHERE f.created_at > {start} AND f.created_at <= {horizon}
        AND NOT EXISTS (SELECT 1 FROM {predictions} p WHERE p.id = f.prediction_id))
