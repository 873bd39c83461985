"""Input drift: per-feature KS (numeric) and chi-squared (categorical) tests against the training data."""
