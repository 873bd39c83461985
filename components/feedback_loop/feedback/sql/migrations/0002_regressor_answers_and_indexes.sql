-- 2: regressors' answers, the indexes of the window, exclusion and retention queries.
ALTER TABLE predictions ADD COLUMN predicted_value double precision;  -- a regressor's answer
-- Counting a window's non-consenting rows reads only them.
CREATE INDEX predictions_no_consent ON predictions (model_name, created_at) WHERE NOT consent;
-- Retention deletes by age whatever the model.
CREATE INDEX predictions_created_at ON predictions (created_at);
-- Future-dated and orphan feedback are counted by time; the prediction id comes from the index.
CREATE INDEX feedback_created_at ON feedback (created_at) INCLUDE (prediction_id);
CREATE INDEX retrain_runs_model_time ON retrain_runs (model_name, started_at);
