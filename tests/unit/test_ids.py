"""Ids: new ones are version-7 UUIDs (time, then random) in the canonical text form;
derived ones repeat, and carry a new id's time prefix when derived from one."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime

import pytest

from services.common import ids
from services.common.ids import derived_id, new_id
from services.engine.context import context_for
from tests.support.engine import T0
from tests.support.engine import parsed_command as command


def test_new_ids_are_canonical_version_7_uuids_of_now() -> None:
    before = time.time_ns() // 1_000_000
    made = [new_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == len(made)
    variants = set()
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case hex, dashes where uuid puts them
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: Unix time in ms
        variants.add(text[19])
    assert variants == set("89ab")  # every variant digit occurs, no other


def test_new_ids_of_a_later_millisecond_sort_after_earlier_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(1_765_000_000_000_000_000, 1_765_000_100_000_000_000, 1_000_000))
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock))
    made = [new_id() for _ in range(500)]
    assert made == sorted(made)
    assert uuid.UUID(made[0]).int >> 80 == 1_765_000_000_000


def test_derived_ids_repeat_for_the_same_parts_only() -> None:
    assert derived_id("execute", "alice", "k") == derived_id("execute", "alice", "k")
    assert derived_id("execute", "alice", "k") != derived_id("execute", "bob", "k")
    assert str(uuid.UUID(derived_id("a"))) == derived_id("a")


def test_derived_ids_without_a_time_prefix_are_those_of_earlier_versions() -> None:
    # Pinned from the code before version 7 ids: a retry across an upgrade (an idempotency
    # key's execution, a command id a client chose) must still name the same thing.
    assert derived_id("execution", "alice", "k") == "cd743369-31d7-f618-2982-d3c08b5286e6"
    assert derived_id("c1", "run", time_of="c1") == "693c90b1-82c5-6137-af76-15ea09e5e4a7"
    v4 = str(uuid.UUID(int=0x1234, version=4))
    assert derived_id(v4, "run", time_of=v4) == derived_id(v4, "run")
    shouting = new_id().upper()  # not canonical: not taken for a new id
    assert derived_id(shouting, "run", time_of=shouting) == derived_id(shouting, "run")


def test_an_id_derived_from_a_new_id_carries_its_time_prefix() -> None:
    source = new_id()
    run_id = derived_id(source, "run", time_of=source)
    assert run_id == derived_id(source, "run", time_of=source)  # still deterministic
    assert run_id[:13] == source[:13]
    parsed = uuid.UUID(run_id)
    assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, run_id)
    assert run_id != derived_id(source, "execution", time_of=source)
    assert run_id[24:] == derived_id(source, "run")[24:]  # the hash's bits after the time


def _v7_made_at(iso: str) -> str:
    """A version 7 id whose time prefix is `iso` (as `new_id` would have made then)."""
    t = f"{int(datetime.fromisoformat(iso).timestamp() * 1000):012x}"
    return f"{t[:8]}-{t[8:]}-7abc-9def-0123456789ab"


def test_the_engine_derives_a_start_s_run_id_from_its_command_id_s_time() -> None:
    # `command` issues at 2026-01-01T00:00:00Z; an id made by the API then.
    command_id = _v7_made_at("2026-01-01T00:00:00.250+00:00")
    start = command("StartWorkflow", command_id, workflow_name="wf")
    run_id = context_for(start, T0).new_run_id
    assert run_id[:13] == command_id[:13] and uuid.UUID(run_id).version == 7
    assert run_id == context_for(start, T0 + 1).new_run_id  # not from the clock
    successor = context_for(command("ContinueAsNew", command_id, run_id="r1"), T0)
    assert successor.new_execution_id[:13] == successor.successor_run_id[:13] == command_id[:13]


def test_a_hashed_command_id_shaped_like_version_7_keeps_the_run_id_of_earlier_versions() -> None:
    # An idempotency-keyed execute's command id (hash-formatted) that happens to have a 7
    # and a variant digit where a version 7 id has them (about 1 in 64): its time "prefix"
    # is no time near the command's, so the run id stays the plain hash's, as before.
    user, keys = "alice", (f"order-{n}" for n in range(10_000))
    for key in keys:
        cid = derived_id("execute", user, derived_id("execution", user, key), key)
        if uuid.UUID(cid).version == 7 and cid[19] in "89ab":
            break
    start = command("StartWorkflow", cid, workflow_name="wf")
    assert context_for(start, T0).new_run_id == derived_id(cid, "run")
    # A version 7 id made more than a day away from the command's issue time is not taken
    # either; one made within the day is.
    far = _v7_made_at("2025-12-30T00:00:00+00:00")
    near = _v7_made_at("2025-12-31T12:00:00+00:00")
    assert context_for(
        command("StartWorkflow", far, workflow_name="wf"), T0
    ).new_run_id == derived_id(far, "run")
    assert (
        context_for(command("StartWorkflow", near, workflow_name="wf"), T0).new_run_id[:13]
        == near[:13]
    )


def _random_part(id_: str) -> str:
    """What follows the time prefix and the version digit."""
    return id_[15:]


def test_a_forked_child_never_hands_out_the_random_digits_its_parent_will() -> None:
    new_id()  # the parent's pool holds digits not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, ",".join(new_id() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = pipe.read().split(",")
    os.waitpid(pid, 0)
    parents = [new_id() for _ in range(4)]
    assert len(childs) == 4
    assert not {_random_part(i) for i in childs} & {_random_part(i) for i in parents}


def test_threads_never_share_random_digits() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(3000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parts = [_random_part(i) for out in made for i in out]
    assert len(set(parts)) == len(parts) == 12_000


def test_each_thread_draws_its_own_block_of_random_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each call of the OS's random source gives a block whose every byte is the call's
    # number, so an id's last digits tell which block it came from. Threads that start
    # together and each make one id must each have drawn a block of their own: with one
    # pool shared between threads (no lock), they would hand out digits of one block.
    calls = 0
    lock = threading.Lock()

    def numbered_block(n: int) -> bytes:
        nonlocal calls
        with lock:
            calls += 1
            return bytes([calls]) * n

    monkeypatch.setattr(ids.os, "urandom", numbered_block)
    start = threading.Barrier(4)
    blocks: list[str] = []

    def make() -> None:
        start.wait()
        made = new_id()
        with lock:
            blocks.append(made[-2:])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(blocks) == ["01", "02", "03", "04"]
