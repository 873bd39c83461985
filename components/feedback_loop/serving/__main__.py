"""`python -m feedback_loop.serving MODEL_DIR`: the serve image's entry point.

KServe mounts the model at /mnt/models and names it after the InferenceService; the
defaults follow that, flags override.
"""

from __future__ import annotations

import argparse
import os
import sys

from feedback_loop.errors import FeedbackLoopError
from feedback_loop.serving.model import require_complete
from feedback_loop.serving.server import DEFAULT_HOST, DEFAULT_PORT, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feedback_loop.serving", description=__doc__)
    parser.add_argument("model_dir", nargs="?", default="/mnt/models", help="version directory (saved_model/, lineage.json)")
    parser.add_argument("--model_name", "--name", dest="name", default=os.environ.get("K_SERVICE_MODEL_NAME", "model"))
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--http_port", "--port", dest="port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    parser.add_argument("--log-level", default=os.environ.get("RETRAIN_LOG_LEVEL", "INFO"))
    args, _ = parser.parse_known_args(argv)  # KServe adds its own flags to the container's arguments
    try:
        require_complete(args.model_dir)  # before TensorFlow loads anything
    except FeedbackLoopError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    serve(args.model_dir, args.name, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
