-- Predictions captured by the model server, a batch at a time, are copied straight into the
-- table (copy_predictions.sql). A batch retried after a lost commit would repeat ids: then it
-- goes through this session's staging table (emptied at commit), moved in one statement
-- (move_predictions.sql) that skips the ids already there, so nothing is written twice.
CREATE TEMP TABLE IF NOT EXISTS capture_predictions
    (LIKE {predictions} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
