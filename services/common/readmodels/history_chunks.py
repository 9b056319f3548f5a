"""History chunks and blocks: a run's events as stored in `history`.

- a chunk holds up to HISTORY_CHUNK events (`_id` = `{run_id}:{chunk:06d}`,
  `chunk = (event_number - 1) // HISTORY_CHUNK`), written as events arrive
  (`apply_to_history`);
- a block holds exactly HISTORY_BLOCK events, the ten chunks of a block joined
  (`_id` = `{run_id}:b{block:06d}`), written once, when the block's last event arrives and
  all its chunks are full (`seal_block`). It never changes after, and it exists only
  complete: a whole history reads 10 blocks instead of 100 chunks.

Readers plan which documents a range of events needs (`history_doc_ids`) and cut the
events' JSON out of whatever blocks and chunks they got (`lines_between`). Pure: no I/O.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from schemas.events import Event

Document = dict[str, Any]

HISTORY_CHUNK = 100
HISTORY_BLOCK = 1000
"""Events per sealed block (a multiple of HISTORY_CHUNK). 1,000 measured best on FerretDB:
10,000 events read in 75 ms as 10 blocks, 103 ms as blocks of 500, 264 ms as 100 chunks
(docs/read-models.md, "Histories")."""
BLOCK_MAX_TEXT_BYTES = 64 << 20
"""A block whose events' JSON exceeds this is not sealed (its chunks serve it): events of up
to ~1 MB each (the command size limit) must not make the projector join 1 GB of text."""
BLOCK_MAX_BYTES = 4 << 20
"""A block whose compressed body exceeds this is not sealed: MongoDB refuses documents over
16 MiB, and a read of one document that large would stall the others."""
BLOCK_WORTH_CHUNKS = 4
"""A reader takes a sealed block instead of its chunks when it needs at least this many of
them: on FerretDB a block read costs about what 3 chunk reads do (75 ms for 10 blocks,
264 ms for 100 chunks)."""


HISTORY_HEAD = "history_head"
"""The field of a run row that holds the run's chunk 0 (`{first, last, count, body}`, the
chunk document's fields but `_id` and `run_id`), for runs whose first event opened the row,
while its text stays within HEAD_MAX_TEXT_CHARS. A start then writes no `history` document:
the projector's two (row, pointer) instead of three, four documents per workflow start
with the engine's two (commit, run locator) instead of five (docs/read-models.md, "The
head: chunk 0 in the run row")."""
HEAD_MAX_TEXT_CHARS = 256 << 10
"""A head whose events' JSON exceeds this many characters moves out of the row into the
chunk document `{run_id}:000000`, for good: run rows stay far below MongoDB's 16 MiB (with
a result of up to ~1 MB), and every later replace of the row carries its head. A chunk's
text only grows, so whether a run's head moved out depends on its events, not on how they
were batched (the rebuild writes the same documents as the live projector)."""


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


def history_block_of(event_number: int) -> int:
    """The number of the block that holds `event_number`."""
    return (event_number - 1) // HISTORY_BLOCK


def history_block_key(run_id: str, block: int) -> str:
    """The `_id` of a run's block number `block`. A chunk `_id` ends in digits after its last
    ':', a block `_id` in 'b' and digits, so the two never collide, whatever the run id."""
    return f"{run_id}:b{block:06d}"


def is_block(doc_id: str) -> bool:
    """Whether a `history` `_id` names a block (else a chunk)."""
    return doc_id.rpartition(":")[2].startswith("b")


def block_span(block: int) -> tuple[int, int]:
    """The first and last event numbers of block number `block`."""
    return block * HISTORY_BLOCK + 1, (block + 1) * HISTORY_BLOCK


def history_ids_of(run_id: str, event_number: int) -> list[str]:
    """The history documents folding event `event_number` of a run reads or writes: its
    chunk; and, for the last event of a block, the block and the block's other chunks
    (from which `seal_block` makes it)."""
    ids = [history_chunk_id(run_id, event_number)]
    if event_number % HISTORY_BLOCK == 0:
        block = history_block_of(event_number)
        first, last = block_span(block)
        ids += [history_block_key(run_id, block), *history_chunk_range(run_id, first, last)]
    return ids


def history_doc_ids(
    run_id: str, first: int, last: int, sealed: int, missing: Collection[str] = ()
) -> list[str]:
    """The `_id`s a read of events `first`..`last` asks for: per block, the block if it can
    be sealed (its last event is at most `sealed`, the events the run row reflects) and
    the read needs at least BLOCK_WORTH_CHUNKS of its chunks, and it is not among the
    blocks found `missing` already; else those chunks. A block asked for may be missing
    (histories written before blocks existed, events too large): `chunk_ids_uncovered`
    names the chunks to read then."""
    ids: list[str] = []
    if last < first:
        return ids
    for block in range(history_block_of(first), history_block_of(last) + 1):
        low, high = block_span(block)
        chunks = history_chunk_range(run_id, max(first, low), min(last, high))
        block_id = history_block_key(run_id, block)
        if high <= sealed and len(chunks) >= BLOCK_WORTH_CHUNKS and block_id not in missing:
            ids.append(block_id)
        else:
            ids += chunks
    return ids


def chunk_ids_uncovered(
    docs: Mapping[str, Document], run_id: str, first: int, last: int
) -> list[str]:
    """The chunk `_id`s of events `first`..`last` that no block in `docs` holds."""
    ids: list[str] = []
    if last < first:
        return ids
    for block in range(history_block_of(first), history_block_of(last) + 1):
        if history_block_key(run_id, block) not in docs:
            low, high = block_span(block)
            ids += history_chunk_range(run_id, max(first, low), min(last, high))
    return ids


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
_LINE_BYTES = b"\n"
_ZLIB_LEVEL = 1  # the fastest level: higher ones gain little on JSON


def compressed(text: bytes) -> bytes:
    """`text` as zlib (level 1), with a window no larger than the text needs.

    `zlib.compress` sets up its full 32 KiB window and hash table whatever the input; for a
    one-event run head that set-up was 28 µs of 37 on a quiet core here, more on a busy one
    (fresh pages), though a warm loop elsewhere measured no difference (it depends on the
    allocator's state). A window and hash sized to the text compress it as well (its matches
    are within the window, less deflate's 262-byte margin: a few bytes at most).
    `zlib.decompress` reads every window size, so readers are unchanged.
    """
    bits = min(15, max(9, len(text).bit_length()))
    if bits == 15:
        return zlib.compress(text, _ZLIB_LEVEL)
    packer = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, bits, bits - 7)
    return packer.compress(text) + packer.flush()


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


def seal_block(run_id: str, block: int, docs: Mapping[str, Document]) -> Document | None:
    """Block number `block` of a run, made from its chunks in `docs` (stored or as the fold
    left them), its body compressed; None if a chunk is missing or not full (the block
    cannot be sealed yet) or the block would be too large (BLOCK_MAX_TEXT_BYTES,
    BLOCK_MAX_BYTES: its chunks keep serving it). Deterministic: the same chunks always
    give the same block, so a block derived again after a crash or by a rebuild is equal."""
    first, last = block_span(block)
    texts: list[str] = []
    size = 0
    for chunk_id in history_chunk_range(run_id, first, last):
        chunk = docs.get(chunk_id)
        if chunk is None or int(chunk["count"]) != HISTORY_CHUNK:
            return None  # (a full chunk holds its 100 numbers once each: no holes)
        text = chunk_body_text(chunk)
        size += len(text) + 1
        if size > BLOCK_MAX_TEXT_BYTES:
            return None
        texts.append(text)
    body = compressed(_LINE.join(texts).encode())
    if len(body) > BLOCK_MAX_BYTES:
        return None
    block_id = history_block_key(run_id, block)
    return {
        "_id": block_id,
        "run_id": run_id,
        "first": first,
        "last": last,
        "count": HISTORY_BLOCK,
        "body": body,
    }


def head_chunk(run: Document | None) -> Document | None:
    """A run row's head as the chunk document it stands for (None if the row has none)."""
    head = run.get(HISTORY_HEAD) if run is not None else None
    if head is None:
        return None
    run_id = str(run["run_id"])  # type: ignore[index]
    return {"_id": history_chunk_key(run_id, 0), "run_id": run_id, **head}


def head_docs(run: Document | None) -> dict[str, Document]:
    """`{chunk 0 _id: head_chunk}` for a row with a head, else empty: what a reader merges
    over the history documents it read (the head wins over a chunk 0 document)."""
    chunk = head_chunk(run)
    return {} if chunk is None else {str(chunk["_id"]): chunk}


def head_of(chunk: Document) -> Document:
    """The head field of a run row holding `chunk` (chunk 0)."""
    return {k: chunk[k] for k in ("first", "last", "count", "body")}


def merged_chunk(chunk: Document, older: Document | None) -> Document:
    """`chunk` with the events of `older` (the same chunk as stored elsewhere) it lacks;
    `chunk` itself when it has them all. An event is the same text wherever it is held."""
    if older is None:
        return chunk
    texts = dict(chunk_event_texts(older))
    mine = dict(chunk_event_texts(chunk))
    if texts.keys() <= mine.keys():
        return chunk
    return _chunk_of(str(chunk["_id"]), str(chunk["run_id"]), {**texts, **mine})


def chunk_text_chars(chunk: Document) -> int:
    """Characters of a chunk's event lines (its body as the fold holds it: text)."""
    body = chunk["body"]
    return len(body) if isinstance(body, str) else len(chunk_body_text(chunk))


def stored_run(run: Document) -> Document:
    """A run row as it is written: its head's body compressed."""
    head = run.get(HISTORY_HEAD)
    if head is not None and isinstance(head.get("body"), str):
        return {**run, HISTORY_HEAD: head_of(stored_chunk(head))}
    return run


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


def chunk_body_bytes(chunk: Document) -> bytes:
    """The event lines of a chunk or block as UTF-8, decompressed if stored."""
    body = chunk["body"]
    return zlib.decompress(body) if isinstance(body, bytes) else str(body).encode()


def stored_chunk(chunk: Document) -> Document:
    """A chunk as it is written: its body compressed."""
    body = chunk.get("body")
    if isinstance(body, str):
        return {**chunk, "body": compressed(body.encode())}
    return chunk


def events_of_chunks(chunks: Iterable[Document]) -> dict[int, Document]:
    """The events stored in history chunks, parsed, by event_number."""
    out: dict[int, Document] = {}
    for chunk in chunks:
        for number, text in chunk_event_texts(chunk):
            out[number] = json.loads(text)
    return out


def lines_between(
    docs: Mapping[str, Document], run_id: str, first: int, last: int
) -> list[bytes] | None:
    """The event texts `first`..`last` held by `docs` (blocks and chunks by `_id`; a block,
    when there, serves all its events) as runs of lines: UTF-8 event JSON texts joined by
    newlines, one run per document, a whole document's body as it decompresses (nothing
    split, decoded or copied for the events in the middle); None if one is missing."""
    runs: list[bytes] = []
    n = first
    while n <= last:
        block = history_block_of(n)
        doc = docs.get(history_block_key(run_id, block))
        high = min(last, block_span(block)[1])
        if doc is None:
            doc = docs.get(history_chunk_id(run_id, n))
            high = min(last, (history_chunk_of(n) + 1) * HISTORY_CHUNK)
        if doc is None:
            return None
        held_first, held_last = int(doc["first"]), int(doc["last"])
        if int(doc["count"]) == held_last - held_first + 1:
            # Without holes (always, in practice): slice the lines, parse nothing.
            if not held_first <= n <= high <= held_last:
                return None
            raw = chunk_body_bytes(doc)
            if n != held_first or high != held_last:
                lines = raw.split(_LINE_BYTES)
                raw = _LINE_BYTES.join(lines[n - held_first : high - held_first + 1])
            runs.append(raw)
        else:
            held = dict(chunk_event_texts(doc))
            if any(k not in held for k in range(n, high + 1)):
                return None
            runs.append(_LINE.join(held[k] for k in range(n, high + 1)).encode())
        n = high + 1
    return runs


def texts_of_lines(runs: Iterable[bytes]) -> list[str]:
    """One JSON text per event from runs of lines (`lines_between`)."""
    return [text for run in runs for text in run.decode().split(_LINE)]


def texts_between(
    docs: Mapping[str, Document], run_id: str, first: int, last: int
) -> list[str] | None:
    """`lines_between` as one JSON text per event."""
    runs = lines_between(docs, run_id, first, last)
    return None if runs is None else texts_of_lines(runs)
