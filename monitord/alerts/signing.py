"""Webhook signatures: how monitord signs a body and how a receiver checks it.

`X-Monitord-Signature: sha256=<hex HMAC-SHA256(secret, "<X-Monitord-Timestamp>.<raw body>")>`.
Standard library only, so the README can show receivers these same few lines.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_S = 300.0  # receivers should refuse older timestamps: a captured request cannot be replayed


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Monitord-Signature` value for `body` sent with `X-Monitord-Timestamp: timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now_s: float | None = None,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """True when `signature` is monitord's for this timestamp and raw body (compared in constant time).

    With `now_s` (the receiver's clock, unix seconds) a timestamp further than `tolerance_s` away is refused.
    """
    if now_s is not None:
        try:
            sent_s = int(timestamp)
        except ValueError:
            return False
        if abs(now_s - sent_s) > tolerance_s:
            return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature.strip())
