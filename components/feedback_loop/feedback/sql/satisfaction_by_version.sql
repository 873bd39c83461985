-- Answered predictions and positive answers per model version, consenting users only.
-- The latest answer per prediction counts (a user may change a thumbs-down into a thumbs-up).
SELECT model_version, count(*) AS answered, count(*) FILTER (WHERE is_correct) AS positive
FROM (
    SELECT DISTINCT ON (p.id) p.model_version, f.is_correct
    FROM predictions p
    JOIN feedback f ON f.prediction_id = p.id
    WHERE p.model_name = %(model_name)s
      AND p.model_version = ANY(%(versions)s)
      AND p.created_at >= %(start)s AND p.created_at < %(end)s
      AND p.consent
    ORDER BY p.id, f.created_at DESC, f.id DESC
) latest
GROUP BY model_version
