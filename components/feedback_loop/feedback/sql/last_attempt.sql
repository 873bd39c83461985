-- The newest run that decided to retrain after `after` (production's creation): when it exists,
-- that attempt blessed nothing (or its model would be production), and the next one needs new evidence.
SELECT started_at, run_name, stats FROM retrain_runs
WHERE model_name = %(model_name)s AND retrain AND (%(after)s::timestamptz IS NULL OR started_at > %(after)s::timestamptz)
ORDER BY started_at DESC, id DESC LIMIT 1
