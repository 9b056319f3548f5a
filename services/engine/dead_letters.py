"""Dead letters as records of `workflows.commands.dlq`, and where one too large for the
topic goes instead.

A dead letter is the refused record as it came (key, value, headers) plus `x-dlq-*`
headers saying why and where from. The broker accepted the original, but the copy is
larger by those headers, so a record near the size limit cannot be dead-lettered as is:
publishing it would fail on every retry and stop the partition. Such a dead letter is
stored whole in the `dead_letters` collection (`_id` = `{topic}:{partition}:{offset}`,
written again harmlessly on redelivery), and the topic gets a pointer record: the same key
(truncated if huge), the first `PREVIEW_BYTES` of the value, the `x-dlq-*` headers and
`x-dlq-stored-in` / `x-dlq-stored-id` / `x-dlq-value-bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from bson import Binary
from pymongo import ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from schemas.admission import TOPIC_RECORD_BYTES
from services.common.kafka_io import Outgoing
from services.common.mongo import Document
from services.common.settings import Topics
from services.engine.validation import DeadLetter

DEAD_LETTERS = "dead_letters"
PREVIEW_BYTES = 4096
_MAX_POINTER_KEY = 1024
_MAX_ERROR = 2000  # a detail may quote the record (a key mismatch names the key)
# Per-record framing Kafka adds (lengths, offsets, attributes); generous.
_RECORD_OVERHEAD = 128


def record_bytes(record: Outgoing) -> int:
    """About what `record` weighs against the broker's record limit."""
    headers = sum(len(k) + len(v.encode()) for k, v in (record.headers or {}).items())
    return len(record.key.encode()) + len(record.value) + headers + _RECORD_OVERHEAD


def stored_id(dead: DeadLetter, topics: Topics) -> str:
    r = dead.record
    return f"{topics.commands}:{r.partition}:{r.offset}"


def _dlq_headers(dead: DeadLetter, topics: Topics) -> dict[str, str]:
    r = dead.record
    return {
        "x-dlq-reason": dead.reason,
        "x-dlq-error": dead.detail[:_MAX_ERROR],
        "x-dlq-source-topic": topics.commands,
        "x-dlq-source-partition": str(r.partition),
        "x-dlq-source-offset": str(r.offset),
    }


def dead_letter_record(dead: DeadLetter, topics: Topics) -> Outgoing:
    """The dead letter whole: original key, value and headers, plus the `x-dlq-*` ones."""
    r = dead.record
    headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
    headers.update(_dlq_headers(dead, topics))
    key = r.key.decode("utf-8", "replace") if r.key is not None else ""
    return Outgoing(topics.dlq, key, r.value or b"", headers)


def pointer_record(dead: DeadLetter, topics: Topics) -> Outgoing:
    """What the topic gets for a dead letter stored in `dead_letters` instead."""
    r = dead.record
    value = r.value or b""
    key = r.key.decode("utf-8", "replace")[:_MAX_POINTER_KEY] if r.key is not None else ""
    headers = _dlq_headers(dead, topics)
    headers.update(
        {
            "x-dlq-stored-in": DEAD_LETTERS,
            "x-dlq-stored-id": stored_id(dead, topics),
            "x-dlq-value-bytes": str(len(value)),
        }
    )
    return Outgoing(topics.dlq, key, value[:PREVIEW_BYTES], headers)


def stored_document(dead: DeadLetter, topics: Topics) -> Document:
    r = dead.record
    return {
        "_id": stored_id(dead, topics),
        "reason": dead.reason,
        "error": dead.detail,
        "source_topic": topics.commands,
        "source_partition": r.partition,
        "source_offset": r.offset,
        "key": Binary(r.key) if r.key is not None else None,
        "value": Binary(r.value or b""),
        "headers": [[k, Binary(v)] for k, v in r.headers],
        "stored_at": datetime.now(UTC),
    }


class DeadLetterRecords:
    """Turns a batch's dead letters into DLQ records, storing the oversized ones first."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        topics: Topics,
        record_limit: int = TOPIC_RECORD_BYTES,
    ) -> None:
        self._db = db
        self._topics = topics
        self._limit = record_limit

    async def records(self, dead_letters: Sequence[DeadLetter]) -> list[Outgoing]:
        out: list[Outgoing] = []
        oversized: list[DeadLetter] = []
        for dead in dead_letters:
            whole = dead_letter_record(dead, self._topics)
            if record_bytes(whole) <= self._limit:
                out.append(whole)
            else:
                oversized.append(dead)
                out.append(pointer_record(dead, self._topics))
        if oversized:
            # Stored before the pointer is published (the caller publishes after this
            # returns); a replace by `_id`, so a redelivered batch writes the same again.
            await self._db[DEAD_LETTERS].bulk_write(
                [
                    ReplaceOne({"_id": d["_id"]}, d, upsert=True)
                    for d in (stored_document(x, self._topics) for x in oversized)
                ],
                ordered=False,
            )
        return out
