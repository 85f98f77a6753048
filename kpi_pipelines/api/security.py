"""API keys, the per-key rate limit and webhook signatures.

- Keys come from `KPI_API_KEYS`; a request presents one as `Authorization: Bearer KEY` or
  `X-API-Key: KEY`. The presented key is compared with *every* configured key with
  `hmac.compare_digest` over SHA-256 digests (fixed length), so neither the match nor the
  keys' lengths show in the timing. No key configured: every request is refused.
- Each key has a token bucket (in memory, per process): `rate` tokens a second up to
  `burst`; a request takes one, and an empty bucket answers 429 with `Retry-After`.
  Requests that fail authentication draw from a bucket of their client address, so keys
  cannot be guessed at full speed.
- Webhooks are signed, not keyed: `X-KPI-Signature: sha256=<hex HMAC-SHA256 of the raw
  body>` with `KPI_WEBHOOK_SECRET`; with an `X-KPI-Timestamp: <unix seconds>` header the
  signed text is `<timestamp>.<raw body>` and a timestamp more than five minutes away is
  refused (a replay of such a request cannot drop the header: the signature would no longer
  match).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass

from kpi_pipelines.api.config import WEBHOOK_TOLERANCE_SECONDS


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The configured API keys; `match` returns the matching key's index or None."""

    def __init__(self, keys: tuple[str, ...]):
        self._digests = [_digest(key) for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, presented: str | None) -> int | None:
        if not presented:
            return None
        candidate = _digest(presented)
        found = None
        for index, digest in enumerate(self._digests):  # no early exit: constant time in the match
            if hmac.compare_digest(candidate, digest) and found is None:
                found = index
        return found


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: `Authorization: Bearer KEY`, else `X-API-Key: KEY`."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by name, in memory. `take(name)` returns 0 when a token was taken, else
    the whole seconds to wait before one is available (for `Retry-After`)."""

    def __init__(self, rate: float, burst: float, max_buckets: int = 100_000):
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, name: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:
                if len(self._buckets) >= self.max_buckets:
                    self._forget_full(now)
                bucket = self._buckets[name] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0
            return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no state worth keeping)."""
        full = [
            name
            for name, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst
        ]
        for name in full:
            del self._buckets[name]
        if len(self._buckets) >= self.max_buckets:  # still full: forget the oldest
            for name in sorted(self._buckets, key=lambda n: self._buckets[n].updated)[: self.max_buckets // 10]:
                del self._buckets[name]


class SignatureError(Exception):
    """Why a webhook request is not authentic (the message is safe to return)."""


def sign(secret: str, body: bytes, timestamp: str | None = None) -> str:
    """The `X-KPI-Signature` value for a body (and optional `X-KPI-Timestamp`)."""
    message = (timestamp.encode() + b"." + body) if timestamp is not None else body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str, body: bytes, signature: str | None, timestamp: str | None, now: float | None = None
) -> None:
    if not secret:
        raise SignatureError("webhooks are disabled: KPI_WEBHOOK_SECRET is not set")
    if not signature:
        raise SignatureError("missing X-KPI-Signature header")
    if timestamp is not None:
        text = timestamp.strip()
        if not text.isdigit() or len(text) > 12:
            raise SignatureError("X-KPI-Timestamp must be unix seconds")
        now = time.time() if now is None else now
        if abs(now - int(text)) > WEBHOOK_TOLERANCE_SECONDS:
            raise SignatureError(f"X-KPI-Timestamp is more than {WEBHOOK_TOLERANCE_SECONDS} s away from now")
        timestamp = text
    expected = sign(secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8", "replace")):
        raise SignatureError("X-KPI-Signature does not match the body")
