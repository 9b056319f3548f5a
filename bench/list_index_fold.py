"""CPU per one-activity workflow of the run list index's fold, by the index's size.

    .venv/bin/python bench/list_index_fold.py [--sizes 1000,10000,40000] [--workflows 1000]

Folds the five events of bench/fixtures/one_activity_workflow.json (recorded from a real
stack; each workflow with new ids and times 1 ms apart, as a closed loop makes them) into
a `RunListIndex` until it holds each size of runs, then times `--workflows` more
(process CPU, the garbage collector tuned as `runstore api` tunes it). What the API's
list index feed does per workflow, without the decoding (the fan-out decodes events once
for all its readers). Compare two checkouts by running each one's copy, alternating.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.events import EVENT_ADAPTER, Event  # noqa: E402
from services.common.ids import new_id  # noqa: E402
from services.common.readmodels.list_index import RunListIndex  # noqa: E402
from services.common.runtime import tune_gc  # noqa: E402

FIXTURE = REPO / "bench" / "fixtures" / "one_activity_workflow.json"
_TIMESTAMP = re.compile(rb'"timestamp_ns":\d+')


class Workflows:
    """The recorded workflow's events, again and again, with new ids and times."""

    def __init__(self) -> None:
        recorded = json.loads(FIXTURE.read_text())
        self._events = [
            r["value"].encode() for r in recorded["records"] if r["topic"] == "workflows.events"
        ]
        self._ids = (recorded["execution_id"].encode(), recorded["run_id"].encode())
        self._clock = 1_800_000_000_000_000_000

    def next(self) -> list[Event]:
        execution_id, run_id = new_id().encode(), new_id().encode()
        out = []
        for value in self._events:
            self._clock += 1_000_000
            value = _TIMESTAMP.sub(b'"timestamp_ns":%d' % self._clock, value)
            value = value.replace(self._ids[0], execution_id).replace(self._ids[1], run_id)
            out.append(EVENT_ADAPTER.validate_json(value))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,40000")
    parser.add_argument("--workflows", type=int, default=1000)
    args = parser.parse_args()
    workflows = Workflows()
    index = RunListIndex()
    tune_gc()
    for size in (int(s) for s in args.sizes.split(",")):
        while len(index) < size - args.workflows:
            for event in workflows.next():
                index.apply(event)
        batch = [workflows.next() for _ in range(args.workflows)]
        started = time.process_time()
        for events in batch:
            for event in events:
                index.apply(event)
        per = (time.process_time() - started) / args.workflows
        print(f"{REPO}: {per * 1e6:.1f} us per workflow folded at {len(index)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
