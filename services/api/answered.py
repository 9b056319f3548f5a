"""Executions and runs this API instance answered a command of, whose events its run list
index may not have folded yet.

With direct replies (docs/api-gateway.md, "The direct reply channel") an execute is
answered once the engine has stored its commit, before its events are on
`workflows.events`: a point read sent right after the answer can reach the API before the
index has folded the start. Such a read of an id noted here waits, a bounded time, for the
index to fold it (services/api/run_reader.py) rather than going the store's way (the read
models, then the commits: several round trips to the store). Ids nobody here answered (an
unknown id: a 404) never wait.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class AnsweredRecently:
    def __init__(self, wait_s: float, keep_s: float = 5.0, size: int = 10_000) -> None:
        """`wait_s`: longest a read waits for the index (0: never); an id is kept
        `keep_s` after its answer, at most `size` ids (the oldest go first)."""
        self.wait_s = wait_s
        self._keep_s = keep_s
        self._size = size
        self._until: OrderedDict[str, float] = OrderedDict()

    def note(self, execution_id: str, run_id: str | None) -> None:
        """An accepted outcome of a command of `execution_id` (of run `run_id`)."""
        if self.wait_s <= 0:
            return
        until = time.monotonic() + self._keep_s
        kept = self._until
        for key in (execution_id, run_id):
            if key is not None:
                kept[key] = until
                kept.move_to_end(key)
        while len(kept) > self._size:
            kept.popitem(last=False)

    def expects(self, key: str) -> bool:
        """Whether `key` (an execution or run id) was answered within the last `keep_s`."""
        until = self._until.get(key)
        return until is not None and time.monotonic() < until
