-- Quantiles (on the evenly spaced `grid`) of each version's confidences in [0, 1] and of its
-- numeric predicted values, consenting users only: enough to compare two distributions.
SELECT model_version,
       percentile_cont(%(grid)s::float8[]) WITHIN GROUP (ORDER BY confidence)
           FILTER (WHERE confidence >= 0 AND confidence <= 1) AS confidence_quantiles,
       percentile_cont(%(grid)s::float8[]) WITHIN GROUP (ORDER BY value) AS value_quantiles
FROM (
    SELECT model_version, confidence,
           CASE WHEN predicted_label ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,2})?\s*$'
                THEN predicted_label::float8 END AS value
    FROM predictions
    WHERE model_name = %(model_name)s
      AND model_version = ANY(%(versions)s)
      AND created_at >= %(start)s AND created_at < %(end)s
      AND consent
) p
GROUP BY model_version
