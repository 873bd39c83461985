-- Feedback on an expiring prediction, and feedback that is old itself (run before the predictions go).
DELETE FROM {feedback} WHERE created_at < %(cutoff)s
   OR prediction_id IN (SELECT id FROM {predictions} WHERE created_at < %(cutoff)s)
