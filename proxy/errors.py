"""Exceptions of the proxy, each mapped to one OpenAI-shaped error response.

    ProxyError                       every error a client can see (status, type, code)
    ├── InvalidRequest        400    bad JSON, wrong schema
    ├── Unauthorized          401    missing or unknown bearer token
    ├── ModelNotFound         404    no configured backend serves the model
    ├── RouteNotFound         404    unknown path
    ├── MethodNotAllowed      405
    ├── BodyTooLarge          413    body over ``max_body_bytes``
    └── BackendError                 the backend failed us (also counted in metrics)
        ├── BackendUnavailable    502  connection refused / dropped, protocol error
        ├── BackendTimeout        504  no bytes within ``read_timeout`` (or connect timeout)
        ├── BadBackendResponse    502  a success that is not what the protocol says (non-JSON
        │                              body, malformed or unterminated stream event, no [DONE])
        └── UpstreamHTTPError     4xx/5xx passed through from the backend, reshaped

:func:`error_body` is the single place that turns an exception into the wire shape
``{"error": {"message", "type", "param", "code"}}``; the app's handler and the raw hot-path
routes both go through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class ProxyError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return self.status

    def error_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RouteNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BackendError(ProxyError):
    """The backend failed; ``kind`` labels ``drpo_backend_errors_total``."""

    kind: ClassVar[str] = "error"
    type = "upstream_error"


class BackendUnavailable(BackendError):
    status = 502
    code = "backend_unavailable"
    kind = "connect"


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"
    kind = "timeout"


class BadBackendResponse(BackendError):
    status = 502
    code = "bad_backend_response"
    kind = "bad_response"


class UpstreamHTTPError(BackendError):
    """A 4xx/5xx from the backend, carried with the backend's own status and error fields."""

    def __init__(self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(str(error.get("message") or f"backend returned HTTP {status}"), headers=headers)
        self._status = status
        self._error = error

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def kind_label(self) -> str:
        return f"http_{self._status}"

    def error_dict(self) -> dict[str, Any]:
        return self._error


def error_kind(exc: BackendError) -> str:
    return exc.kind_label if isinstance(exc, UpstreamHTTPError) else exc.kind


def error_body(exc: ProxyError) -> bytes:
    return orjson.dumps({"error": exc.error_dict()})


def upstream_error(status: int, body: bytes, headers: dict[str, str] | None = None) -> UpstreamHTTPError:
    """Reshape whatever error body a backend sent into OpenAI's error shape."""
    message: Any = None
    fields: dict[str, Any] = {}
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict):
            fields = inner
        elif isinstance(inner, str):
            fields = {"message": inner}
        else:
            # vLLM / FastAPI style: fields at the top level, or {"detail": ...}.
            fields = {k: data[k] for k in ("message", "type", "param", "code") if k in data}
            if "detail" in data and "message" not in fields:
                fields["message"] = data["detail"] if isinstance(data["detail"], str) else _as_text(data["detail"])
    elif body:
        message = body.decode("utf-8", "replace")[:2000]
    # Each field is checked: whatever the backend sent, the error we answer with must encode.
    found = fields.get("message")
    if found is not None and not isinstance(found, str):
        found = _as_text(found)
    kind, param, code = fields.get("type"), fields.get("param"), fields.get("code", status)
    error = {
        "message": found or message or f"backend returned HTTP {status}",
        "type": kind
        if isinstance(kind, str) and kind
        else "invalid_request_error"
        if status < 500
        else "upstream_error",
        "param": param if isinstance(param, str) else None,
        "code": code if code is None or isinstance(code, str) or _is_int(code) else status,
    }
    return UpstreamHTTPError(status, error, headers)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()[:2000]
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return "(unreadable error detail)"


def stream_error_fields(value: Any) -> dict[str, Any]:
    """A backend's in-stream ``{"error": value}`` in OpenAI's four-field shape (always encodable)."""
    fields: dict[str, Any] = value if isinstance(value, dict) else {"message": value}
    message = fields.get("message")
    if not isinstance(message, str):
        message = "" if message is None else _as_text(message)
    kind, param, code = fields.get("type"), fields.get("param"), fields.get("code")
    return {
        "message": message or "the backend reported an error",
        "type": kind if isinstance(kind, str) and kind else "upstream_error",
        "param": param if isinstance(param, str) else None,
        "code": code if isinstance(code, str) or _is_int(code) else None,
    }
