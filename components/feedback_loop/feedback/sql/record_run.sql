INSERT INTO retrain_runs (started_at, model_name, run_name, retrain, reasons, stats)
VALUES (%(started_at)s, %(model_name)s, %(run_name)s, %(retrain)s, %(reasons)s, %(stats)s)
