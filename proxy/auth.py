"""Client authentication: bearer tokens from ``DRPO_API_KEYS``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from proxy.errors import Unauthorized


class KeyChecker:
    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: bytes | None) -> None:
        """Raise :class:`Unauthorized` unless the header carries one of the keys."""
        if not self._keys:
            return
        token = b""
        if authorization is not None:
            scheme, _, value = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                token = value.strip()
        # Compare against every key (no early exit) so timing says nothing about which matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        if not ok:
            message = "Missing bearer token" if not token else "Incorrect API key provided"
            raise Unauthorized(message, headers={"www-authenticate": "Bearer"})
