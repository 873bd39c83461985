-- Answers taken by the model server's feedback endpoint, a batch at a time. No check that the
-- prediction exists: an answer for an unknown one is kept and counted as an orphan by the extraction.
INSERT INTO {feedback} (prediction_id, created_at, is_correct, corrected_label, comment)
VALUES %s
