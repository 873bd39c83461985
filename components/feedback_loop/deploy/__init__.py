"""Deployment stage: publish a model version, then roll it out through a canary (local or KServe)."""
