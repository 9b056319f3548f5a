"""History blocks: 1,000 events sealed in one document once their ten chunks are full,
written by the projector's fold (live, across batches, after a crash) and read by the
RunReader wherever a read needs most of a block; histories without blocks (written before
blocks existed, or events too large for one) are read from their chunks. In memory; the
same on the real server is tests/integration/test_run_reader.py."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Collection, Mapping

import pytest

from schemas.commands import SignalExecution, SignalPayload
from services.api.run_reader import RunReader
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels import history_chunks
from services.common.readmodels.history_chunks import (
    HISTORY_BLOCK,
    chunk_body_text,
    chunk_ids_uncovered,
    event_json,
    history_block_key,
    history_chunk_key,
    history_doc_ids,
    history_ids_of,
    is_block,
    lines_between,
    seal_block,
    texts_between,
)
from services.common.readmodels.memory_store import MemoryReadModels
from services.common.readmodels.projection import ids_touched
from services.common.readmodels.store import HISTORY, Document
from services.projector.projector import Projector
from tests.support.workloads import Workload, all_chunks, fold_all

EVENTS = 2 * HISTORY_BLOCK + 500


def long_workload(events: int = EVENTS) -> Workload:
    w = Workload()
    w.start("a")
    w.signals("a", events - 1)
    return w


def blocks_of(history: Mapping[str, Document]) -> dict[str, Document]:
    return {i: d for i, d in history.items() if is_block(i)}


def numbers(texts: list[str]) -> list[int]:
    return [json.loads(t)["event_number"] for t in texts]


# --- ids and plans ------------------------------------------------------------------------------


def test_block_and_chunk_ids_never_collide() -> None:
    assert history_block_key("r", 2) == "r:b000002"
    assert is_block("r:b000002") and not is_block("r:000002")
    # A run id that looks like a block suffix still names chunks.
    assert not is_block(history_chunk_key("r:b000002", 0))


def test_the_last_event_of_a_block_touches_the_block_and_its_chunks() -> None:
    assert history_ids_of("r", 999) == ["r:000009"]
    ids = history_ids_of("r", 1000)
    assert ids[:2] == ["r:000009", "r:b000000"]
    assert set(ids[2:]) == {f"r:{c:06d}" for c in range(10)}


def test_a_read_plans_sealed_blocks_it_needs_most_of_and_chunks_for_the_rest() -> None:
    # A whole history of 2,500 events: two blocks, then the open tail's chunks.
    assert history_doc_ids("r", 1, 2500, 2500) == [
        "r:b000000",
        "r:b000001",
        *(f"r:{c:06d}" for c in range(20, 25)),
    ]
    # Not sealed yet (the row reflects 1,999 events): the second block's chunks.
    assert history_doc_ids("r", 1, 1999, 1999)[1:] == [f"r:{c:06d}" for c in range(10, 20)]
    # Pages of 100 stay on chunks; a page of 1000 across two blocks takes the one it
    # needs 8 chunks of and the 3 chunks of the other.
    assert history_doc_ids("r", 101, 200, 2500) == ["r:000001"]
    assert history_doc_ids("r", 201, 1200, 2500) == ["r:b000000", "r:000010", "r:000011"]
    # A block found missing is read as chunks.
    missing = ["r:b000000"]
    assert history_doc_ids("r", 1, 1000, 2500, missing) == [f"r:{c:06d}" for c in range(10)]
    assert chunk_ids_uncovered({"r:b000000": {}}, "r", 901, 1100) == ["r:000010"]


# --- writing ------------------------------------------------------------------------------------


def test_a_block_is_sealed_when_its_last_event_is_folded_and_holds_its_chunks() -> None:
    w = long_workload()
    run_id = w.run_id("a")
    docs = fold_all(w.all_events())
    blocks = blocks_of(docs.history)
    assert sorted(blocks) == [history_block_key(run_id, 0), history_block_key(run_id, 1)]
    held = all_chunks(docs.history, docs.runs)  # block 0's chunk 0 is the row's head
    assert history_chunk_key(run_id, 0) not in docs.history
    for b, block in enumerate(sorted(blocks)):
        doc = blocks[block]
        assert (doc["first"], doc["last"], doc["count"]) == (b * 1000 + 1, b * 1000 + 1000, 1000)
        chunks = [held[history_chunk_key(run_id, c)] for c in range(b * 10, b * 10 + 10)]
        assert chunk_body_text(doc) == "\n".join(chunk_body_text(c) for c in chunks)
        assert isinstance(doc["body"], bytes)
    # One event short of a block: nothing sealed.
    assert not blocks_of(fold_all(w.all_events()[:999]).history)


def test_ids_touched_hands_the_fold_what_sealing_needs() -> None:
    w = long_workload(1000)
    events = w.all_events()
    _, _, ids = ids_touched(events[-1:])
    assert history_block_key(w.run_id("a"), 0) in ids and len(ids) == 11


async def test_the_projector_seals_blocks_across_batches_and_equals_one_fold() -> None:
    w = long_workload()
    events = w.all_events()
    whole = fold_all(events)
    rnd = random.Random(7)
    for forget in (False, True):  # remembered documents, or everything read back
        store = MemoryReadModels()
        projector = Projector(store)
        k = 0
        while k < len(events):
            step = rnd.choice((1, 7, 99, 100, 101, 450))
            await projector.apply(events[k : k + step])
            k += step
            if forget:
                projector.forget()
        assert store.data[HISTORY] == whole.changes()[0]
        # Re-delivery of everything changes nothing.
        await Projector(store).apply(events)
        assert store.data[HISTORY] == whole.changes()[0]


class _CrashOnBlocks(MemoryReadModels):
    """A store whose process dies (an exception) on the first write of a block: the
    block's chunks are written, the block, the row and the pointer are not."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        if not self.crashed and any(is_block(i) for i in docs):
            self.crashed = True
            raise ConnectionError("killed between the chunks and the block")
        return await super().insert_new(collection, docs)


async def test_a_crash_between_the_chunks_and_the_block_is_sealed_on_redelivery() -> None:
    w = long_workload(1200)
    events = w.all_events()
    store = _CrashOnBlocks()
    await Projector(store).apply(events[:900])
    with pytest.raises(ConnectionError):
        await Projector(store).apply(events[900:1050])
    run_id = w.run_id("a")
    assert history_chunk_key(run_id, 9) in store.data[HISTORY]
    assert not blocks_of(store.data[HISTORY])
    # Restarted: the batch is delivered again (its offset was never committed).
    await Projector(store).apply(events[900:1050])
    await Projector(store).apply(events[1050:])
    assert store.data[HISTORY] == fold_all(events).changes()[0]


def _signal(w: Workload, text: str) -> None:
    w.run(SignalExecution(**w._env("a"), payload=SignalPayload(name="big", input=text)))


async def test_a_block_too_large_is_not_sealed_and_its_chunks_serve_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = Workload()
    w.start("a")
    rnd = random.Random(3)
    for _ in range(HISTORY_BLOCK - 1):
        # Hardly compressible text: ~1.4 kB compressed per event, ~1.4 MB a block.
        _signal(w, "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=2000)))
    events = w.all_events()
    docs = fold_all(events)
    run_id = w.run_id("a")
    block = docs.history[history_block_key(run_id, 0)]
    assert 1 << 20 < len(block["body"]) < history_chunks.BLOCK_MAX_BYTES
    monkeypatch.setattr(history_chunks, "BLOCK_MAX_BYTES", 1 << 20)
    assert seal_block(run_id, 0, docs.history) is None
    models = await _stored(w)
    assert not blocks_of(models.data[HISTORY])
    reader = RunReader(models, MemoryCommitLog(w.commits))
    whole = await reader.run_history_page(run_id)
    assert whole is not None and numbers(whole.events) == list(range(1, HISTORY_BLOCK + 1))
    monkeypatch.setattr(history_chunks, "BLOCK_MAX_BYTES", 4 << 20)
    monkeypatch.setattr(history_chunks, "BLOCK_MAX_TEXT_BYTES", 1 << 20)
    assert not blocks_of(fold_all(events).history)


def test_a_block_with_a_chunk_missing_or_not_full_is_not_sealed() -> None:
    w = long_workload(1000)
    docs = fold_all(w.all_events())
    run_id = w.run_id("a")
    held = all_chunks(docs.history, docs.runs)
    partial = {i: d for i, d in held.items() if i != history_chunk_key(run_id, 4)}
    assert seal_block(run_id, 0, partial) is None
    short = dict(held)
    short[history_chunk_key(run_id, 4)] = {**short[history_chunk_key(run_id, 4)], "count": 99}
    assert seal_block(run_id, 0, short) is None
    assert seal_block(run_id, 0, docs.history) is None  # chunk 0 is in the row
    assert seal_block(run_id, 0, held) == docs.history[history_block_key(run_id, 0)]


# --- reading ------------------------------------------------------------------------------------


class _CountingModels(MemoryReadModels):
    """Records the history `_id`s each read asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        if collection == HISTORY:
            self.asked.append(list(ids))
        return await super().load(collection, ids)


async def _stored(w: Workload, blocks: bool = True) -> _CountingModels:
    models = _CountingModels()
    await Projector(models).apply(w.all_events())
    if not blocks:
        for i in [i for i in models.data[HISTORY] if is_block(i)]:
            del models.data[HISTORY][i]
    models.asked.clear()
    return models


@pytest.mark.parametrize("blocks", [True, False], ids=["blocks", "chunks only"])
async def test_whole_histories_and_pages_read_the_same_with_or_without_blocks(
    blocks: bool,
) -> None:
    w = long_workload()
    models = await _stored(w, blocks)
    reader = RunReader(models, MemoryCommitLog(w.commits))
    run_id = w.run_id("a")
    whole = await reader.run_history_page(run_id)
    assert whole is not None
    assert [json.loads(t) for t in whole.events] == [event_json(e) for e in w.all_events()]
    asked = [i for ids in models.asked for i in ids]
    assert sum(map(is_block, asked)) == 2  # the two sealed blocks, found or not
    if blocks:
        assert len(asked) == 2 + 5  # 2 blocks, the tail's chunks (chunk 0 is the row's head)
    for size in (100, 1000, 333, 1):
        after: int | None = 0
        got: list[int] = []
        while after is not None:
            page = await reader.run_history_page(run_id, after, size)
            assert page is not None
            got += numbers(page.events)
            after = page.next_after
        assert got == list(range(1, EVENTS + 1)), size


async def test_a_page_of_a_block_reads_the_block_with_the_row() -> None:
    w = long_workload()
    models = await _stored(w)
    reader = RunReader(models, MemoryCommitLog(w.commits))
    page = await reader.run_history_page(w.run_id("a"), 1000, 1000)
    assert page is not None and numbers(page.events) == list(range(1001, 2001))
    assert models.asked == [[history_block_key(w.run_id("a"), 1)]]


def test_texts_between_slices_blocks_and_chunks_alike() -> None:
    w = long_workload(1300)
    history, runs, _ = fold_all(w.all_events()).changes()
    docs = all_chunks(history, runs)
    run_id = w.run_id("a")
    expected = [e.model_dump_json() for e in w.all_events()]
    for first, last in ((1, 1300), (995, 1005), (1000, 1000), (1001, 1300), (37, 963)):
        assert texts_between(docs, run_id, first, last) == expected[first - 1 : last]
        only_chunks = {i: d for i, d in docs.items() if not is_block(i)}
        assert texts_between(only_chunks, run_id, first, last) == expected[first - 1 : last]
    assert texts_between({}, run_id, 1, 1) is None
    # A whole block is one run of lines, its body as it decompresses: nothing split.
    block = docs[history_block_key(run_id, 0)]
    assert lines_between(docs, run_id, 1, 1000) == [zlib.decompress(block["body"])]
    assert len(lines_between(docs, run_id, 1, 1300) or []) == 4  # the block, 3 chunks


@pytest.mark.parametrize("size", [0, 1, 255, 256, 511, 512, 4_000, 16_383, 16_384, 100_000])
def test_bodies_are_compressed_with_a_window_the_text_needs(size: int) -> None:
    """A small body (a new run's one-event head) is packed with a window of its size, not
    zlib's full 32 KiB one, which costs most of a start's projection to set up; any size
    reads back with plain `zlib.decompress`."""
    rng = random.Random(size)
    text = "".join(rng.choice('{}":,abcdef0123456789') for _ in range(size)).encode()
    body = history_chunks.compressed(text)
    assert zlib.decompress(body) == text
    window_bits = (body[0] >> 4) + 8  # the zlib header's CINFO
    assert window_bits == min(15, max(9, size.bit_length()))
    assert 2**window_bits >= min(size, 2**15)
