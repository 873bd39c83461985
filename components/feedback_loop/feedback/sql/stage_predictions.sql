-- Predictions captured by the model server, a batch at a time: COPY (copy_predictions.sql) into a
-- session's staging table (emptied at commit), then moved in one statement (move_predictions.sql).
-- A batch retried after a lost commit writes nothing twice: the id is the key.
CREATE TEMP TABLE IF NOT EXISTS capture_predictions
    (LIKE {predictions} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
