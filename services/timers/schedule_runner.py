"""Evaluates the schedules this instance owns and starts their runs.

A schedule belongs to the events partition its id hashes to (Kafka's murmur2, as a record
keyed by it), so the instance owning that partition in the `timers` group evaluates it:
N instances share schedules as they share timers, and a rebalance hands them over.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from schemas.commands import COMMAND_ADAPTER
from schemas.common import ExecutionStatus
from schemas.schedules import (
    OverlapPolicy,
    StoredSchedule,
    jitter_ns,
    next_time,
    schedule_command_id,
    schedule_execution_id,
    schedule_start,
    to_ns,
)
from services.common.clock import now_ns, ns_to_datetime, utcnow
from services.common.kafka_io import Outgoing, RecordPublisher, murmur2
from services.common.readmodels.history_chunks import HISTORY_HEAD
from services.common.readmodels.reader import ReadModelReader
from services.common.readmodels.store import EXECUTIONS, RUNS
from services.common.schedule_store import MongoScheduleStore
from services.common.settings import TimersSettings
from services.timers.stats import TimerStats

log = logging.getLogger(__name__)

Document = dict[str, Any]
_MAX_FIRINGS_PER_PASS = 100
_RECENT = 10
_PASS_SECONDS = 0.1
_UNPROJECTED_GRACE = timedelta(seconds=60)


def schedule_partition(schedule_id: str, partition_count: int) -> int:
    hashed: int = murmur2(schedule_id.encode()) & 0x7FFFFFFF
    return hashed % partition_count


class ScheduleRunner:
    def __init__(
        self,
        store: MongoScheduleStore,
        read_models: ReadModelReader,
        publisher: RecordPublisher,
        settings: TimersSettings,
        stats: TimerStats,
    ) -> None:
        self._store = store
        self._read_models = read_models
        self._publisher = publisher
        self._commands_topic = settings.topics.commands
        self._refresh_s = settings.timers_schedule_refresh_seconds
        self._stats = stats
        self.partition_count = settings.partitions
        self.owned: frozenset[int] = frozenset()
        self._states: dict[str, Document] = {}
        self._states_for: frozenset[int] = frozenset()

    async def run(self) -> None:
        schedules: list[StoredSchedule] = []
        loop = asyncio.get_running_loop()
        refreshed = 0.0
        while True:
            try:
                if loop.time() - refreshed >= self._refresh_s:
                    schedules = await self._store.all_schedules()
                    refreshed = loop.time()
                await self.evaluate(schedules)
            except Exception:
                log.exception("evaluating schedules failed; retrying")
                await asyncio.sleep(1.0)
            await asyncio.sleep(_PASS_SECONDS)

    async def evaluate(self, schedules: list[StoredSchedule]) -> None:
        if self.owned != self._states_for:
            # Ownership moved: what another instance did meanwhile is in the store.
            self._states.clear()
            self._states_for = self.owned
        mine = [
            s
            for s in schedules
            if schedule_partition(s.schedule_id, self.partition_count) in self.owned
        ]
        self._stats.schedules_owned = len(mine)
        for schedule in mine:
            await self._evaluate_one(schedule)

    async def _evaluate_one(self, schedule: StoredSchedule) -> None:
        sid = schedule.schedule_id
        state = self._states.get(sid)
        if state is None:
            state = await self._store.state(sid) or {"_id": sid, "fired_count": 0, "recent": []}
            self._states[sid] = state
        if schedule.paused:
            return
        now = now_ns()
        changed = False
        buffered = state.get("buffered_ns")
        if buffered is not None and not await self._running(state.get("last_execution_id")):
            state["buffered_ns"] = None
            await self._start(schedule, state, ns_to_datetime(buffered))
            changed = True
        last = state.get("last_scheduled_ns")
        after = schedule.active_since
        if last is not None and ns_to_datetime(last) > after:
            after = ns_to_datetime(last)
        catchup_ns = int(schedule.catchup_window_seconds * 1e9)
        for _ in range(_MAX_FIRINGS_PER_PASS):
            if self._exhausted(schedule, state):
                break
            at = next_time(schedule, after)
            if at is None:
                break
            at_ns = to_ns(at)
            if at_ns + jitter_ns(sid, at_ns, schedule.jitter_seconds) > now:
                break
            after = at
            state["last_scheduled_ns"] = at_ns
            changed = True
            if now - at_ns > catchup_ns:
                continue  # missed during downtime, outside the catch-up window
            if schedule.overlap is not OverlapPolicy.ALLOW_ALL and await self._running(
                state.get("last_execution_id")
            ):
                if schedule.overlap is OverlapPolicy.BUFFER_ONE:
                    state["buffered_ns"] = at_ns
                continue
            await self._start(schedule, state, at)
        if changed:
            await self._store.save_state(sid, state)

    @staticmethod
    def _exhausted(schedule: StoredSchedule, state: Document) -> bool:
        return (
            schedule.max_executions is not None
            and int(state.get("fired_count", 0)) >= schedule.max_executions
        )

    async def _start(self, schedule: StoredSchedule, state: Document, at: datetime) -> None:
        """Send the firing's StartWorkflow, then record it in the state (saved by the
        caller). A crash in between sends the same command id again: one run."""
        at_ns = to_ns(at)
        execution_id = schedule_execution_id(schedule.schedule_id, at)
        command = schedule_start(
            schedule, execution_id, schedule_command_id(schedule.schedule_id, at_ns), utcnow()
        )
        await self._publisher.publish_batches(
            [Outgoing(self._commands_topic, execution_id, COMMAND_ADAPTER.dump_json(command))]
        )
        self._stats.schedule_starts_total += 1
        state["last_execution_id"] = execution_id
        state["fired_count"] = int(state.get("fired_count", 0)) + 1
        recent = list(state.get("recent", []))
        recent.append({"scheduled_at": at, "started_at": utcnow(), "execution_id": execution_id})
        state["recent"] = recent[-_RECENT:]

    async def _running(self, execution_id: str | None) -> bool:
        """Whether the schedule's last run is still open (read models, two `_id` reads).
        A run not projected yet counts as running for a while: it was just started."""
        if execution_id is None:
            return False
        pointer = await self._read_models.get(EXECUTIONS, execution_id)
        if pointer is None:
            recent = self._started_at(execution_id)
            return recent is not None and utcnow() - recent < _UNPROJECTED_GRACE
        # (Without its history's head: only the status is needed.)
        run = await self._read_models.get(
            RUNS, str(pointer["latest_run_id"]), without=(HISTORY_HEAD,)
        )
        return run is not None and ExecutionStatus(run["status"]).is_open

    def _started_at(self, execution_id: str) -> datetime | None:
        for state in self._states.values():
            for item in state.get("recent", []):
                if item["execution_id"] == execution_id:
                    started: datetime = item["started_at"]
                    return started
        return None
