"""A run's history, read from the commit log: the instance rebuilt by replay, or a cached
instance brought up to date."""

from __future__ import annotations

import asyncio
import logging

from runstore.workflows._definitions import ActivityDefinition, WorkflowDefinition
from runstore.workflows._instance import WorkflowInstance
from runstore.workflows._replay_rules import OPENS_ATTEMPT, recorded_as_sent
from schemas.commits import Commit
from schemas.events import Event, EventType
from services.common.commit_log import CommitLog

log = logging.getLogger("runstore.worker")


class RunHistory:
    def __init__(
        self,
        commits: CommitLog,
        activities: dict[str, ActivityDefinition],
        own_command_wait_seconds: float,
    ) -> None:
        self._commits = commits
        self._activities = activities
        self._own_command_wait = own_command_wait_seconds

    async def catch_up(self, instance: WorkflowInstance, seq: int) -> bool:
        """Apply the commits after the instance's; False if it must be rebuilt (another
        worker advanced the run, the engine refused this worker's last command, or kept
        another report under its command id)."""
        own = instance.last_command_id
        waited = 0.0
        while True:
            commits = await self.commits_after(instance.execution_id, instance.applied_seq)
            last = commits[-1].seq if commits else instance.applied_seq
            own_seen = own is None or any(c.command_id == own for c in commits)
            if own_seen and last >= seq:
                break
            if waited >= self._own_command_wait:
                return False
            await asyncio.sleep(0.02)
            waited += 0.02
        for commit in commits:
            events = [e for e in commit.events if e.run_id == instance.run_id]
            if commit.command_id == own:
                if not recorded_as_sent(instance.last_steps, events):
                    return False  # another worker's report under the same id came first
                instance.applied_seq = commit.seq
                instance.last_command_id = None
                continue
            if events and events[0].type == EventType.WORKFLOW_TASK_COMPLETED:
                return False
            instance.apply(events)
        return True

    async def replay(
        self, execution_id: str, run_id: str, seq: int, definition: WorkflowDefinition
    ) -> WorkflowInstance | None:
        """Rebuild the run's instance from its history: back from `seq` to the commit that
        opened the current attempt, then forward to the newest commit."""
        commits: list[Commit] = []
        probe = seq
        opening: Event | None = None
        while probe >= 1:
            commit = await self._commits.get(execution_id, probe)
            if commit is None:
                if commits:
                    break
                probe -= 1
                continue
            commits.append(commit)
            opening = next(
                (
                    e
                    for e in reversed(commit.events)
                    if e.run_id == run_id and e.type in OPENS_ATTEMPT
                ),
                None,
            )
            if opening is not None:
                break
            probe -= 1
        if opening is None:
            log.warning("no start of run %s found in execution %s", run_id, execution_id)
            return None
        commits.reverse()
        commits.extend(await self.commits_after(execution_id, commits[-1].seq))
        state = commits[0].state
        started = state.get("started") or {}
        value = (started.get("input") or {}).get("value")
        instance = WorkflowInstance(
            definition,
            execution_id=execution_id,
            run_id=run_id,
            input=value,
            attempt=int(state.get("attempt") or 1),
            activities=self._activities,
            started_ns=opening.timestamp_ns,
        )
        # From the opening event on; a reset's RUN_RESET (just before its STARTED) too: the
        # instance takes the activity outcomes that reset carried over from it.
        events = [
            e
            for c in commits
            for e in c.events
            if e.run_id == run_id
            and (
                c.seq > opening.seq
                or e.index >= opening.index
                or e.type == EventType.WORKFLOW_RUN_RESET
            )
        ]
        instance.apply(events)
        return instance

    async def commits_after(self, execution_id: str, after: int) -> list[Commit]:
        """The execution's commits after seq `after`, up to the newest."""
        return await self._commits.read_after(execution_id, after)
