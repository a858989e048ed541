"""Dashboard sessions: who may read the dashboard, who may change versions, and CSRF tokens.

A login exchanges a key for a session cookie; the cookie never holds the key. The session
token is ``v1.<role>.<expiry>.<nonce>.<signature>``, signed with HMAC-SHA256. With an admin
key configured the signing secret is derived from it (every replica sharing the key accepts
the same sessions, and changing the key ends them all); otherwise it is random per process.

Roles: ``admin`` (the admin key: may activate, roll back, promote) and ``reader`` (a client
key from ``DRPO_API_KEYS``: may read when client keys make reading private). Every change is a
POST that must carry the session's form token, an HMAC of the session token, on top of the
``SameSite=Strict`` cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.auth import bearer_token, matches_any

Role = Literal["admin", "reader"]
COOKIE_NAME = "drpo_ui_session"
SESSION_SECONDS = 12 * 3600
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    role: Role
    token: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class UiAccess:
    """Checks keys, issues and verifies session tokens, and derives form tokens."""

    def __init__(self, admin_key: str | None, client_keys: Sequence[str]) -> None:
        self._admin = [admin_key.encode()] if admin_key else []
        self._clients = [k.encode() for k in client_keys]
        seed = admin_key.encode() if admin_key else secrets.token_bytes(32)
        self._secret = hmac.new(seed, b"drpo-ui-session", hashlib.sha256).digest()

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin)

    @property
    def reading_is_private(self) -> bool:
        """Client keys are configured: prompts are not shown to anyone without a key."""
        return bool(self._clients)

    def role_for_key(self, key: str) -> Role | None:
        # Both lists are always compared, so timing does not tell an admin key from a client key.
        token = key.strip().encode()
        admin = bool(token) and matches_any(token, self._admin)
        client = bool(token) and matches_any(token, self._clients)
        return "admin" if admin else "reader" if client else None

    def role_for_bearer(self, authorization: str | None) -> Role | None:
        """A key sent as ``Authorization: Bearer`` (scripts reading pages without a login)."""
        token = bearer_token(authorization.encode() if authorization else None)
        return self.role_for_key(token.decode(errors="replace")) if token else None

    def issue(self, role: Role, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + SESSION_SECONDS)
        body = f"{_VERSION}.{role}.{expiry}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str | None, now: float | None = None) -> Session | None:
        if not token:
            return None
        body, _, signature = token.rpartition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or parts[1] not in ("admin", "reader"):
            return None
        try:
            expiry = int(parts[2])
        except ValueError:
            return None
        if expiry < (time.time() if now is None else now):
            return None
        role: Role = "admin" if parts[1] == "admin" else "reader"
        if role == "admin" and not self.admin_enabled:
            return None
        return Session(role, token)

    def form_token(self, session: Session) -> str:
        return self._sign(f"form:{session.token}")

    def form_token_ok(self, session: Session, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(str(submitted), self.form_token(session))

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())
