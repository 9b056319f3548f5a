"""Shares of a py-spy profile of the engine's main thread, by piece of the write path.

    .venv/bin/python bench/engine_spy_shares.py PROFILE.raw [PATTERN ...] [--top 40]
        [--with SECOND]

Reads a raw (collapsed) profile as `bench/engine_http.py --spy PROFILE.raw` writes it
(`thread (id): MainThread;frame;frame ... count` per line), leaves out other threads and
the samples whose innermost frame is the loop's poll (`epoll_wait`/`epoll_pwait`: idle),
and prints, as shares of the busy samples that remain:

- each PATTERN's inclusive share (samples with a frame containing it), and with
  `--with SECOND` the part of it whose stack also holds SECOND (e.g. `"write (libc"`:
  how much of a piece is its socket writes);
- by default, the pieces docs/engine-performance.md ("Eleventh session") reports;
- the `--top` functions by inclusive share, and the innermost frames by share.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

PIECES = (
    "Fetcher._proc_fetch_request",
    "Fetcher._fetch_requests_routine",
    "Fetcher._get_actions_per_node",
    "AIOKafkaConnection._read",
    "Sender.",
    "publish_batches",
    "outgoing_records",
    "CommandProcessor.store",
    "_AsyncBulk.execute",
    "commit_offsets",
    "CommandProcessor.decide",
    "CommandProcessor.complete",
    "_run_consume_loop",
    "handle_commands",
    "getpid",
    "BatchTimings",
    "observe_consumed",
    "write (libc",
)

_IDLE = ("epoll_wait", "epoll_pwait")
_LOCATION = re.compile(r" \(([^:)]*)[^)]*\)$")


def busy_stacks(path: Path) -> list[tuple[list[str], int]]:
    """The main thread's busy samples: (frames outermost first, count)."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0] or any(i in frames[-1] for i in _IDLE):
            continue
        out.append((frames[1:], int(count)))
    return out


def short(frame: str) -> str:
    """`function file` of a py-spy frame `function (path/file.py:line)`."""
    m = _LOCATION.search(frame)
    where = m.group(1).rsplit("/", 1)[-1] if m else ""
    return f"{_LOCATION.sub('', frame)} {where}".strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("patterns", nargs="*")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--with", dest="second", default="write (libc")
    args = parser.parse_args()
    stacks = busy_stacks(args.profile)
    total = sum(n for _, n in stacks)
    if not total:
        print("no busy main-thread samples")
        return 1
    print(f"{total} busy samples of the main thread")
    for pattern in args.patterns or PIECES:
        hits = [(frames, n) for frames, n in stacks if any(pattern in f for f in frames)]
        share = sum(n for _, n in hits)
        both = sum(n for frames, n in hits if any(args.second in f for f in frames))
        print(
            f"{100 * share / total:5.1f} %  {pattern}"
            + (f"   (with {args.second!r}: {100 * both / total:.1f} %)" if both else "")
        )
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    for frames, n in stacks:
        for name in {short(f) for f in frames}:
            inclusive[name] += n
        innermost[short(frames[-1])] += n
    print(f"--- top {args.top} functions, inclusive")
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f} %  {name}")
    print("--- top innermost frames")
    for name, n in innermost.most_common(20):
        print(f"{100 * n / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
