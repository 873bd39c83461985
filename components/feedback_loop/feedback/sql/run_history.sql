SELECT started_at, run_name, retrain, reasons, stats FROM retrain_runs WHERE model_name = %(model_name)s
ORDER BY started_at DESC, id DESC LIMIT %(limit)s
