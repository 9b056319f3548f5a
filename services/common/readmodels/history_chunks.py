"""History chunks: a run's events as stored in `history`, up to HISTORY_CHUNK per
document (`_id` = `{run_id}:{chunk:06d}`, `chunk = (event_number - 1) // HISTORY_CHUNK`),
and how they are written (`apply_to_history`) and read (`chunk_event_texts`,
`texts_between`). Pure: no I/O.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from schemas.events import Event

Document = dict[str, Any]

HISTORY_CHUNK = 100


def history_chunk_of(event_number: int) -> int:
    """The number of the chunk that holds `event_number` (1-based event numbers)."""
    return (event_number - 1) // HISTORY_CHUNK


def history_chunk_key(run_id: str, chunk: int) -> str:
    """The `_id` of a run's chunk number `chunk`: the one spelling of a history chunk id."""
    return f"{run_id}:{chunk:06d}"


def history_chunk_id(run_id: str, event_number: int) -> str:
    """The `_id` of the chunk that holds a run's event `event_number`."""
    return history_chunk_key(run_id, history_chunk_of(event_number))


def history_chunk_ids(run_id: str, event_count: int) -> list[str]:
    """The `_id`s of every chunk of a run with `event_count` events."""
    return history_chunk_range(run_id, 1, event_count)


def history_chunk_range(run_id: str, first: int, last: int) -> list[str]:
    """The `_id`s of the chunks holding event numbers `first`..`last` (inclusive)."""
    if last < first:
        return []
    low, high = history_chunk_of(first), history_chunk_of(last)
    return [history_chunk_key(run_id, c) for c in range(low, high + 1)]


def event_json(event: Event) -> Document:
    """An event as the history endpoints show it: the stored event's fields as JSON."""
    return event.model_dump(mode="json")


def event_text(event: Event) -> str:
    """`event_json` as JSON text (what a history chunk stores)."""
    return event.model_dump_json()


# History chunks keep their events as JSON text, one line per event in event_number
# order, zlib-compressed, with the range they cover as plain numbers:
#   {_id, run_id, first, last, count, body: zlib("<event json>\n<event json>\n...")}
# The database never looks inside an event, and FerretDB reads a document of a few flat
# fields and a small binary far faster than nested events (docs/read-models.md has the
# measurements). Readers splice the lines into a response without parsing them. JSON
# text never holds a raw newline, so the separator is unambiguous. While a fold runs, a chunk
# it changed holds its body as text; `ReadModelDocs.changes` compresses it once per batch.
# The events of a run arrive in order (the projector fills gaps from the event store), so
# a chunk normally holds `first`..`last` without holes (`count == last - first + 1`); an
# event that arrives out of order still finds its place (the slow path below).
_LINE = "\n"
_ZLIB_LEVEL = 1  # the fastest level: higher ones gain little on JSON


def apply_to_history(chunk: Document | None, event: Event) -> Document:
    """The history chunk holding `event`, with the event added if it was not already.

    Returns `chunk` itself when the event is already there.
    """
    n = event.event_number
    if chunk is None:
        chunk_id = history_chunk_id(event.run_id, n)
        return _chunk_of(chunk_id, event.run_id, {n: event_text(event)})
    first, last, count = int(chunk["first"]), int(chunk["last"]), int(chunk["count"])
    if n > last:
        return {
            **chunk,
            "last": n,
            "count": count + 1,
            "body": chunk_body_text(chunk) + _LINE + event_text(event),
        }
    if count == last - first + 1 and n >= first:
        return chunk  # within a chunk without holes: already there
    texts = dict(chunk_event_texts(chunk))
    if n in texts:
        return chunk
    texts[n] = event_text(event)
    return _chunk_of(chunk["_id"], chunk["run_id"], texts)


def _chunk_of(chunk_id: str, run_id: str, texts: Mapping[int, str]) -> Document:
    numbers = sorted(texts)
    return {
        "_id": chunk_id,
        "run_id": run_id,
        "first": numbers[0],
        "last": numbers[-1],
        "count": len(numbers),
        "body": _LINE.join(texts[n] for n in numbers),
    }


def chunk_event_texts(chunk: Document) -> Iterator[tuple[int, str]]:
    """(event_number, event JSON text) of every event a chunk holds, in order."""
    lines = chunk_body_text(chunk).split(_LINE)
    first, last = int(chunk["first"]), int(chunk["last"])
    if len(lines) == last - first + 1:
        yield from zip(range(first, last + 1), lines, strict=True)
        return
    for line in lines:  # holes: each line names its own number
        yield int(json.loads(line)["event_number"]), line


def chunk_body_text(chunk: Document) -> str:
    """The event lines of a chunk, decompressed if stored."""
    body = chunk["body"]
    return zlib.decompress(body).decode() if isinstance(body, bytes) else str(body)


def stored_chunk(chunk: Document) -> Document:
    """A chunk as it is written: its body compressed."""
    body = chunk.get("body")
    if isinstance(body, str):
        return {**chunk, "body": zlib.compress(body.encode(), _ZLIB_LEVEL)}
    return chunk


def events_of_chunks(chunks: Iterable[Document]) -> dict[int, Document]:
    """The events stored in history chunks, parsed, by event_number."""
    out: dict[int, Document] = {}
    for chunk in chunks:
        for number, text in chunk_event_texts(chunk):
            out[number] = json.loads(text)
    return out


def texts_between(
    chunks: Mapping[str, Document], run_id: str, first: int, last: int
) -> list[str] | None:
    """The event texts `first`..`last` held by `chunks`, or None if one is missing."""
    texts: list[str] = []
    for c in range(history_chunk_of(first), history_chunk_of(last) + 1):
        chunk = chunks.get(history_chunk_key(run_id, c))
        if chunk is None:
            return None
        low, high = max(first, c * HISTORY_CHUNK + 1), min(last, (c + 1) * HISTORY_CHUNK)
        held_first, held_last = int(chunk["first"]), int(chunk["last"])
        if int(chunk["count"]) == held_last - held_first + 1:
            # Without holes (always, in practice): slice the lines, parse nothing.
            if not held_first <= low <= high <= held_last:
                return None
            lines = chunk_body_text(chunk).split("\n")
            texts += lines[low - held_first : high - held_first + 1]
            continue
        held = dict(chunk_event_texts(chunk))
        if any(n not in held for n in range(low, high + 1)):
            return None
        texts += [held[n] for n in range(low, high + 1)]
    return texts
