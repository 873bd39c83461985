"""Build the training and holdout sets from the old training data and corrected feedback."""
