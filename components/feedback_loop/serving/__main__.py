"""`python -m feedback_loop.serving MODEL_DIR`: the serve image's entry point (our ServingRuntime's).

KServe mounts the model at /mnt/models and names it after the InferenceService; the
defaults follow that, flags override. Capture writes to DATABASE_URL (the feedback-loop-db
Secret) and pseudonymises user ids with FEEDBACK_HMAC_KEY; without DATABASE_URL, or with
--no-capture, nothing is captured.
"""

from __future__ import annotations

import argparse
import os
import sys

from feedback_loop.errors import FeedbackLoopError
from feedback_loop.feedback.pseudonyms import HMAC_KEY_ENV
from feedback_loop.serving.capture import CaptureConfig
from feedback_loop.serving.model import MAX_ROWS, require_complete
from feedback_loop.serving.server import DEFAULT_HOST, DEFAULT_PORT, MAX_BODY_BYTES, serve

DSN_ENV = "DATABASE_URL"


def add_limits(parser: argparse.ArgumentParser) -> None:
    """The flags both entry points (this one and `feedback-loop serve`) share."""
    parser.add_argument("--max_body_bytes", "--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger bodies get 413")
    parser.add_argument("--max_rows", "--max-rows", type=int, default=MAX_ROWS, help="more rows per request get 413")
    parser.add_argument("--no_capture", "--no-capture", action="store_true", help=f"capture nothing, even with {DSN_ENV} set")
    parser.add_argument("--capture_queue_rows", "--capture-queue-rows", type=int, default=CaptureConfig.queue_rows,
                        help="rows waiting for the database, at most; more are dropped and counted")
    parser.add_argument("--capture_rows_in", "--capture-rows-in", choices=("server", "helper"),
                        default="helper" if CaptureConfig.build_process else "server",
                        help="where prediction rows are built: the server's process or a helper process")


def capture_config(no_capture: bool, queue_rows: int, rows_in: str) -> CaptureConfig:
    return CaptureConfig(dsn=None if no_capture else os.environ.get(DSN_ENV) or None, queue_rows=queue_rows,
                         build_process=rows_in == "helper")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feedback_loop.serving", description=__doc__)
    parser.add_argument("model_dir", nargs="?", default="/mnt/models", help="version directory (saved_model/, lineage.json)")
    parser.add_argument("--model_name", "--name", dest="name", default=os.environ.get("K_SERVICE_MODEL_NAME", "model"))
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--http_port", "--port", dest="port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    parser.add_argument("--log-level", default=os.environ.get("RETRAIN_LOG_LEVEL", "INFO"))
    add_limits(parser)
    args, _ = parser.parse_known_args(argv)  # KServe adds its own flags to the container's arguments
    try:
        require_complete(args.model_dir)  # before TensorFlow loads anything
        if args.max_body_bytes < 1024 or args.max_rows < 1 or args.capture_queue_rows < 1:
            raise FeedbackLoopError("--max_body_bytes must be at least 1024, --max_rows and --capture_queue_rows at least 1")
    except FeedbackLoopError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    serve(
        args.model_dir, args.name, args.host, args.port, args.log_level,
        capture=capture_config(args.no_capture, args.capture_queue_rows, args.capture_rows_in), max_body_bytes=args.max_body_bytes,
        max_rows=args.max_rows, hmac_key=os.environ.get(HMAC_KEY_ENV) or None,
    )


if __name__ == "__main__":
    main()
