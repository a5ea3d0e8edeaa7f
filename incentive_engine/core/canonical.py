"""Canonical JSON and hashing: one byte-exact encoding shared by the hash chain, idempotency keys and
the replay digest, so an auditor can recompute every hash with a few lines of their own."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from decimal import Decimal
from typing import Any

GENESIS_HASH = "0" * 64


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} canonically")


# One encoder for every call: json.dumps with options builds a new JSONEncoder each time (a third of
# the cost for a small payload). Same options, same bytes.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text, Decimals and dates as strings."""
    return _ENCODER.encode(value)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_text(
    position: int,
    stream_id: str,
    stream_version: int,
    type_: str,
    effective: str,
    event_id: str | None,
    recorded_at: str,
    payload_json: str,
) -> str:
    """The canonical text of one stored event: canonical_json of the whole record, where ``payload_json``
    is already canonical JSON (spliced in at its sorted place rather than re-encoded, for speed)."""
    head = canonical_json({"effective": effective, "event_id": event_id})
    tail = canonical_json(
        {
            "position": position,
            "recorded_at": recorded_at,
            "stream_id": stream_id,
            "stream_version": stream_version,
            "type": type_,
        }
    )
    return head[:-1] + ',"payload":' + payload_json + "," + tail[1:]


def chain_hash(prev_hash: str, record: str) -> str:
    """hash_n = SHA-256(hash_{n-1} + "\\n" + record_n), hex; hash_0 is 64 zeros."""
    return hashlib.sha256((prev_hash + "\n" + record).encode("utf-8")).hexdigest()


def content_hash(type_: str, effective: str, payload_json: str) -> str:
    """Identity of an event's content, for idempotent re-ingest of events without an event_id."""
    return sha256_hex(type_ + "\n" + effective + "\n" + payload_json)
