"""The retrain decision: a threshold policy with named reasons."""
