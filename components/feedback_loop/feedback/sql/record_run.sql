INSERT INTO retrain_runs (model_name, run_name, retrain, reasons, stats)
VALUES (%(model_name)s, %(run_name)s, %(retrain)s, %(reasons)s, %(stats)s)
