"""Container images, one per dependency group, tagged with the package version (never `latest`).

Components name these at definition time; `feedback-loop compile --registry R` rewrites the
registry in the compiled YAML, so no shell variable is baked into the pipeline.
"""

from feedback_loop import __version__

DEFAULT_REGISTRY = "ghcr.io/feedback-loop"


def image(group: str, registry: str = DEFAULT_REGISTRY) -> str:
    return f"{registry}/{group}:{__version__}"


DATA_IMAGE = image("data")
TRAIN_IMAGE = image("train")
DEPLOY_IMAGE = image("deploy")
SERVE_IMAGE = image("serve")
