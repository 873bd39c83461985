"""What the model server adds to KServe's REST app: limits a hostile client meets, short
errors, and the feedback endpoint.

- A body over `max_body_bytes` is refused with 413 before it is read (Content-Length) or as
  soon as the bytes received pass the limit (chunked), so it never becomes Python objects.
- Every error answer is `{"error": "<one line>"}`, cut to `ERROR_CHARS` characters; so is its
  log line. A client's error (4xx) is logged without a traceback; an exception no handler
  takes is answered 500 here and logged once, cut, with its frames (Starlette's last handler
  would re-raise it for uvicorn to log whole, however long its text).
- `POST /v1/feedback` takes `{"prediction_id", "is_correct", "corrected_label"?, "comment"?}`,
  or an array of up to `MAX_ANSWERS` of them (labels that arrive later, in bulk), and queues
  them for the feedback store (202), all or none; an id the store does not know is kept, and
  the extraction counts it as an orphan.
- `POST /v1/models/<name>:predict` with a plain JSON body goes straight to the model
  (`direct_v1_predict`): KServe's route resolves FastAPI dependencies and passes the body
  through its data plane (CloudEvent checks, encoders) on every request, which costs more
  than a small model's prediction; rows of numbers are parsed straight into one array
  (serving.v1_json). The model's own call (pre/postprocess, metrics) is KServe's;
  CloudEvents and other content types still take KServe's route.
- `POST /v2/models/<name>/infer` with binary tensors (`Inference-Header-Content-Length`)
  goes straight to the model too (`direct_v2_binary`): KServe 0.20 turns the tensors' bytes
  into Python lists, here they stay an array (serving.v2_binary). Any other v2 request is
  KServe's route's.
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from feedback_loop.feedback.capture import FeedbackRow
from feedback_loop.serving import v1_json, v2_binary
from feedback_loop.serving.capture import FEEDBACK, Capture

log = logging.getLogger(__name__)

ERROR_CHARS = 300
FEEDBACK_PATH = "/v1/feedback"
MAX_ANSWERS = 1000  # answers per feedback request
FEEDBACK_BODY_BYTES = 4 << 20  # MAX_ANSWERS answers with comments of a few hundred characters fit
# Longest texts an answer may carry (characters).
MAX_ID, MAX_LABEL, MAX_COMMENT = 200, 200, 2000


class TooLarge(Exception):
    """A request over a limit: 413."""


class BadFeedback(Exception):
    """A feedback answer that cannot be stored as given: 400."""


def cut(text: str, limit: int = ERROR_CHARS) -> str:
    """One line of at most `limit` characters, saying how much was left out."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line) - limit} more characters)"


class RequestGuard:
    """ASGI middleware, outermost of ours: 413 for a body over `max_bytes`, declared or received;
    500 for an exception no handler took."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, int(declared))
            return
        received = 0
        started = False

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise TooLarge(self._message(received, at_least=True))
            return message

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge:
            if not started:
                await self._refuse(scope, send, received)
        except Exception as exc:
            response = error_response(scope.get("path", ""), exc, HTTPStatus.INTERNAL_SERVER_ERROR)
            if not started:
                await response(scope, _no_receive, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        return (f"request body of {'more than ' if at_least else ''}{size} bytes is over this server's limit of {self.max_bytes}: "
                "send fewer rows per request")

    async def _refuse(self, scope: dict, send: Any, size: int) -> None:
        message = self._message(size)
        log.warning("413 %s: %s", cut(scope.get("path", ""), 100), message)
        response = JSONResponse({"error": message}, status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        # The rest of the body is not read: close the connection rather than leave it half read.
        response.headers["connection"] = "close"
        await response(scope, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def install(app: FastAPI, capture: Capture, max_body_bytes: int, direct: tuple[Any, Any, Any] | None = None,
            timings: bool = True) -> None:
    """Adds the body limit, the short error handlers and the feedback route to KServe's app; with
    `direct` (the model, KServe's v1 predict and v2 infer endpoints), the model's plain-JSON v1
    predictions and binary-tensor v2 requests go to it directly; without `timings`, KServe's
    per-request timing middleware (whose lines go to a logger kept below INFO then) is left out."""
    from kserve import errors as kserve_errors

    from feedback_loop.serving.model import TooManyRows

    app.add_middleware(RequestGuard, max_bytes=max_body_bytes)
    statuses: dict[type[BaseException], int] = {
        TooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        TooManyRows: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        BadFeedback: HTTPStatus.BAD_REQUEST,
        RequestValidationError: HTTPStatus.BAD_REQUEST,
        kserve_errors.InvalidInput: HTTPStatus.BAD_REQUEST,
        kserve_errors.ModelNotFound: HTTPStatus.NOT_FOUND,
        kserve_errors.ModelNotReady: HTTPStatus.SERVICE_UNAVAILABLE,
        kserve_errors.InferenceError: HTTPStatus.INTERNAL_SERVER_ERROR,
        NotImplementedError: HTTPStatus.NOT_IMPLEMENTED,
        kserve_errors.UnsupportedProtocol: HTTPStatus.NOT_IMPLEMENTED,
        kserve_errors.ServerNotLive: HTTPStatus.SERVICE_UNAVAILABLE,
        kserve_errors.ServerNotReady: HTTPStatus.SERVICE_UNAVAILABLE,
    }
    for exc_class, status in statuses.items():
        app.add_exception_handler(exc_class, _handler(status))
    app.add_api_route(FEEDBACK_PATH, _feedback_endpoint(capture), methods=["POST"], status_code=HTTPStatus.ACCEPTED)
    if not timings:
        app.user_middleware[:] = [m for m in app.user_middleware if getattr(m.cls, "__name__", "") != "TimingMiddleware"]
    if direct is not None:
        model, kserve_predict, kserve_infer = direct
        direct_v1_predict(app, model, kserve_predict)
        direct_v2_binary(app, model, kserve_infer)


V1_PREDICT = "/v1/models/{model_name}:predict"


def direct_v1_predict(app: FastAPI, model: Any, kserve_predict: Any) -> None:
    """Puts a route for `model`'s plain-JSON v1 predictions ahead of KServe's (see the module
    docstring); any other request on that path (another model name, a CloudEvent, another
    content type) is answered by `kserve_predict`, KServe's own endpoint (V1Endpoints.predict)."""
    from kserve.errors import InvalidInput, ModelNotReady

    async def predict(request: StarletteRequest) -> Response:
        name = request.path_params["model_name"]
        headers = dict(request.headers.items())
        if name != model.name or not _plain_json(headers):
            answer = await kserve_predict(name, request)
            return answer if isinstance(answer, Response) else Response(orjson.dumps(answer), media_type="application/json")
        if not model.ready:
            raise ModelNotReady(name)
        try:
            payload = v1_json.loads(await request.body())
        except orjson.JSONDecodeError as err:
            raise InvalidInput(f"Unrecognized request format: {err}") from None
        answer, answer_headers = await model(payload, headers)
        return _json(answer, answer_headers)

    app.router.routes.insert(0, Route(V1_PREDICT, predict, methods=["POST"]))


V2_INFER = "/v2/models/{model_name}/infer"
BINARY_HEADER = "inference-header-content-length"


def direct_v2_binary(app: FastAPI, model: Any, kserve_endpoint: Any) -> None:
    """Puts a route for `model`'s binary-tensor v2 requests ahead of KServe's (see the module
    docstring); any other request on that path goes, untouched, to `kserve_endpoint`, KServe's
    own endpoint (V2Endpoints.infer), routed as KServe routes it."""
    from fastapi.routing import APIRoute
    from kserve.errors import InvalidInput, ModelNotReady

    kserve_infer = APIRoute(V2_INFER, kserve_endpoint, methods=["POST"], response_model=None)

    async def infer(scope: dict, receive: Any, send: Any) -> None:
        request = StarletteRequest(scope, receive)
        name = request.path_params["model_name"]
        headers = dict(request.headers.items())
        if name != model.name or BINARY_HEADER not in headers or _cloud_event(headers):
            await kserve_infer.app(scope, receive, send)
            return
        if not model.ready:
            raise ModelNotReady(name)
        try:
            payload = v2_binary.read(await request.body(), headers[BINARY_HEADER], name)
        except v2_binary.BadBinaryRequest as err:
            raise InvalidInput(str(err)) from None
        answer, answer_headers = await model(payload, headers)
        body, json_size = answer.to_rest()
        if isinstance(body, bytes):  # binary outputs, as the request asked
            answer_headers[BINARY_HEADER] = str(json_size)
            response = Response(body, media_type="application/octet-stream", headers=answer_headers)
        else:
            response = _json(body, answer_headers)
        await response(scope, receive, send)

    app.router.routes.insert(0, Route(V2_INFER, _Asgi(infer), methods=["POST"]))


class _Asgi:
    """An ASGI app to route to (a plain function would be taken for a request handler)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _json(answer: Any, headers: dict[str, str]) -> Response:
    """A model's answer as JSON (numpy values included)."""
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json", headers=headers)


def _cloud_event(headers: dict[str, str]) -> bool:
    """A binary-mode CloudEvent (its attributes in ce- headers): KServe's data plane answers it."""
    return any(key.startswith("ce-") for key in headers)


def _plain_json(headers: dict[str, str]) -> bool:
    """A JSON body that is no CloudEvent: what KServe's data plane would only parse."""
    kind = headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    return kind == "application/json" and not _cloud_event(headers)


def _handler(status: int) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, exc, status)

    return handle


def error_response(path: str, exc: Exception, status: int) -> JSONResponse:
    """The one-line answer to `exc`, logged: cut, and with its frames for an unexpected server error."""
    if isinstance(exc, RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        text = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
    else:
        text = str(exc) or type(exc).__name__
    message = cut(text)
    where = cut(path, 100)
    if status >= 500:
        # Frames only: the exception's own text, however long, is logged cut, above.
        frames = "".join(traceback.format_tb(exc.__traceback__)) if not _expected(exc) else ""
        log.error("%d %s: %s%s", status, where, message, f"\n{frames.rstrip()}" if frames else "")
    else:
        log.warning("%d %s: %s", status, where, message)
    return JSONResponse({"error": message}, status_code=status)


def _expected(exc: Exception) -> bool:
    """Errors whose message says it all: a model that failed on an input, a model not ready."""
    from kserve import errors as kserve_errors

    return isinstance(exc, (kserve_errors.InferenceError, kserve_errors.ModelNotReady, kserve_errors.ServerNotReady))


def _feedback_endpoint(capture: Capture) -> Any:
    async def feedback(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > FEEDBACK_BODY_BYTES:
            raise TooLarge(f"a feedback request is at most {FEEDBACK_BODY_BYTES} bytes, this one has {len(body)}: send fewer answers per request")
        rows, many = parse_feedback(body)
        if not capture.enabled:
            return JSONResponse({"error": "feedback is not taken here: this server captures nothing (start it with DATABASE_URL set)"},
                                  status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        if len(rows) > capture.config.queue_rows:  # would never fit: not a reason to retry later
            raise TooLarge(f"{len(rows)} answers, more than this server's capture queue holds ({capture.config.queue_rows}): "
                           "send fewer per request")
        if not capture.offer(FEEDBACK, len(rows), rows):
            return JSONResponse({"error": "the feedback queue is full (the feedback database is away): send the answers again later"},
                                  status_code=HTTPStatus.SERVICE_UNAVAILABLE, headers={"retry-after": "5"})
        answer = {"accepted": len(rows)} if many else {"prediction_id": rows[0].prediction_id, "accepted": True}
        return JSONResponse(answer, status_code=HTTPStatus.ACCEPTED)

    return feedback


ONE_ANSWER = '{"prediction_id": "...", "is_correct": true|false}'


def parse_feedback(body: bytes) -> tuple[list[FeedbackRow], bool]:
    """The answers in a feedback request, validated, and whether it sent an array; `BadFeedback`
    names the first thing wrong (and which answer)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadFeedback(f"expected a JSON object {ONE_ANSWER}, or an array of them") from None
    if not isinstance(data, list):
        return [feedback_row(data)], False
    if not 1 <= len(data) <= MAX_ANSWERS:
        raise BadFeedback(f"an array of 1 to {MAX_ANSWERS} answers, not {len(data)}: send the rest in another request")
    rows = []
    for i, answer in enumerate(data):
        try:
            rows.append(feedback_row(answer))
        except BadFeedback as err:
            raise BadFeedback(f"answer {i}: {err}") from None
    return rows, True


def feedback_row(data: Any) -> FeedbackRow:
    """One answer, validated."""
    if not isinstance(data, dict):
        raise BadFeedback(f"expected a JSON object {ONE_ANSWER}")
    if unknown := sorted(set(data) - {"prediction_id", "is_correct", "corrected_label", "comment"}):
        raise BadFeedback(f"unknown fields {', '.join(unknown)}: send prediction_id, is_correct, corrected_label, comment")
    prediction_id = data.get("prediction_id")
    if not isinstance(prediction_id, str) or not prediction_id.strip() or len(prediction_id) > MAX_ID:
        raise BadFeedback(f"prediction_id must be the non-empty text a prediction answered with (at most {MAX_ID} characters)")
    if not isinstance(data.get("is_correct"), bool):
        raise BadFeedback("is_correct must be true or false")
    texts = {}
    for key, limit in (("corrected_label", MAX_LABEL), ("comment", MAX_COMMENT)):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise BadFeedback(f"{key} must be text of at most {limit} characters, or absent")
        texts[key] = value or None
    return FeedbackRow(prediction_id, datetime.now(timezone.utc), data["is_correct"], texts["corrected_label"], texts["comment"])
