"""feedback-loop: keep a production model healthy on Kubeflow and KServe."""

__version__ = "0.1.0"
