-- 3: each prediction's answers newest first, ties by id, straight from the index: the
-- extraction keeps the first of each and counts the rest without sorting.
CREATE INDEX feedback_prediction_latest ON feedback (prediction_id, created_at DESC, id DESC);
DROP INDEX feedback_prediction;
