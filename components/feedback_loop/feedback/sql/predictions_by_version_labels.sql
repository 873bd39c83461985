-- The predicted-label mix per model version, consenting users only: the `top` most frequent
-- labels of each version, with its number of predictions, of distinct labels, and whether
-- every label is a number (a regressor stores its predicted value as text).
SELECT model_version, predicted_label, n, total, distinct_labels, numeric_labels
FROM (
    SELECT model_version, predicted_label, count(*) AS n,
           sum(count(*)) OVER per_version AS total,
           count(*) OVER per_version AS distinct_labels,
           bool_and(predicted_label ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,2})?\s*$') OVER per_version AS numeric_labels,
           row_number() OVER (PARTITION BY model_version ORDER BY count(*) DESC, predicted_label) AS rank
    FROM predictions
    WHERE model_name = %(model_name)s
      AND model_version = ANY(%(versions)s)
      AND created_at >= %(start)s AND created_at < %(end)s
      AND consent
      AND predicted_label IS NOT NULL
    GROUP BY model_version, predicted_label
    WINDOW per_version AS (PARTITION BY model_version)
) ranked
WHERE rank <= %(top)s
