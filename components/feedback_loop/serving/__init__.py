"""The model server for exported versions: a `kserve.Model` predictor and its entry point."""
