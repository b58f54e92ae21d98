"""Errors of the HTTP side and the one JSON shape every error answer has.

    ServingError                 {"error": {"code", "message"}} with an HTTP status
    ├── BadInput            422  the request is readable but its content is wrong
    │   └── ImageError      422  the image itself (not an image, corrupt, bad base64, ...)
    ├── EmptyBody           400
    ├── BodyTimeout         408  the body did not arrive within AADS_BODY_TIMEOUT_S
    ├── PayloadTooLarge     413  upload over the byte limit, too many pixels, batch too long
    ├── UnsupportedMedia    415  wrong Content-Type
    ├── Unauthorized        401  API keys enabled and none / a wrong one given
    ├── NotFound            404
    ├── RateLimited         429  + Retry-After
    ├── Overloaded          503  + Retry-After (micro-batch queue full)
    └── NotReady            503  model still loading, failed, or shutting down

`install_error_handlers(app)` maps these, FastAPI's validation errors, Starlette's HTTP errors
and anything unexpected onto that shape, so no answer is ever a traceback, an exception's text or
a file path (those go to the log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("serving.errors")


class ServingError(Exception):
    """Base: an answer with `status_code`, a short machine `code` and a human `message`."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, dict[str, str]]:
        return error_body(self.code, self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class BadInput(ServingError):
    status_code = 422
    code = "bad_input"


class ImageError(BadInput):
    code = "bad_image"


class EmptyBody(ServingError):
    status_code = 400
    code = "empty_body"


class BodyTimeout(ServingError):
    status_code = 408
    code = "body_timeout"


class PayloadTooLarge(ServingError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMedia(ServingError):
    status_code = 415
    code = "unsupported_media_type"


class Unauthorized(ServingError):
    status_code = 401
    code = "unauthorized"


class NotFound(ServingError):
    status_code = 404
    code = "not_found"


class RateLimited(ServingError):
    status_code = 429
    code = "rate_limited"


class Overloaded(ServingError):
    status_code = 503
    code = "overloaded"


class NotReady(ServingError):
    status_code = 503
    code = "not_ready"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(err: ServingError) -> JSONResponse:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(round(err.retry_after + 0.499))))
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="aads"'
    return JSONResponse(err.to_dict(), status_code=err.status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    408: "request_timeout",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "bad_input",
    429: "rate_limited",
    503: "unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into `{"error": {"code", "message"}}`."""

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("bad_input", _describe_validation(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up mid-body: nobody reads this answer, and it is no server fault.
        return JSONResponse(error_body("client_disconnected", "the client closed the connection"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback for the operator; the client sees one line, never the trace.
        request_id = request.scope.get("state", {}).get("request_id", "-")
        log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path, request_id)
        return JSONResponse(
            error_body("internal_error", f"internal error; the service log has the details (request {request_id})"),
            status_code=500,
        )
