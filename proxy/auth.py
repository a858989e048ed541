"""Client authentication and the bypass policy.

Bearer tokens come from ``DRPO_API_KEYS`` and are compared in constant time. The
``x-drpo-bypass: 1`` header (forward a request without alignment) is allowed to any
authenticated client, to nobody, or to the keys in ``DRPO_BYPASS_KEYS`` (``DRPO_BYPASS``);
a bypass that is not allowed is refused with 403 rather than silently aligned, so a
client comparing aligned and raw answers never mistakes one for the other.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from prompts.config import BypassPolicy
from proxy.errors import ProxyError, Unauthorized

BYPASS_HEADER = b"x-drpo-bypass"


class BypassNotAllowed(ProxyError):
    status = 403
    type = "permission_error"
    code = "bypass_not_allowed"


def bearer_token(authorization: bytes | None) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header; empty if there is none."""
    if authorization is None:
        return b""
    scheme, _, value = authorization.partition(b" ")
    return value.strip() if scheme.lower() == b"bearer" else b""


def matches_any(token: bytes, keys: Sequence[bytes]) -> bool:
    # Compare against every key (no early exit) so timing says nothing about which matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token, key)
    return ok


class KeyChecker:
    def __init__(self, keys: Sequence[str], bypass: BypassPolicy = "any", bypass_keys: Sequence[str] = ()) -> None:
        self._keys = [k.encode() for k in keys]
        self._bypass = bypass
        self._bypass_keys = [k.encode() for k in bypass_keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: bytes | None) -> None:
        """Raise :class:`Unauthorized` unless the header carries one of the keys."""
        if not self._keys:
            return
        token = bearer_token(authorization)
        if not matches_any(token, self._keys):
            message = "Missing bearer token" if not token else "Incorrect API key provided"
            raise Unauthorized(message, headers={"www-authenticate": "Bearer"})

    def bypass_requested(self, authorization: bytes | None, bypass_header: bytes | None) -> bool:
        """True if the request asks to skip alignment and may; :class:`BypassNotAllowed` if it may not.

        Call after :meth:`check`: the key has been authenticated already.
        """
        if bypass_header != b"1":
            return False
        if self._bypass == "any":
            return True
        if self._bypass == "keys" and matches_any(bearer_token(authorization), self._bypass_keys):
            return True
        who = "this proxy" if self._bypass == "off" else "this API key"
        raise BypassNotAllowed(f"x-drpo-bypass is not allowed for {who}", param="x-drpo-bypass")
