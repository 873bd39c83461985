-- The raw inputs (input_uri) of expiring predictions that no prediction kept still points at.
SELECT DISTINCT p.input_uri
FROM {predictions} p
WHERE p.created_at < %(cutoff)s AND p.input_uri IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {predictions} q WHERE q.input_uri = p.input_uri AND q.created_at >= %(cutoff)s)
