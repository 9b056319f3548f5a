"""What a batch decided: one `Decided` per command, gathered into the `Outbound` the
caller publishes before it commits the batch's offsets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.commands import Command
from schemas.commits import Commit
from schemas.events import Event
from schemas.outcomes import CommandOutcome
from schemas.tasks import WorkflowTask
from services.engine.tasks import tasks_for
from services.engine.validation import DeadLetter, InboundRecord


@dataclass(frozen=True, slots=True)
class Decided:
    """One command's answer: the commit it made (or re-publishes), its outcome and the
    commands it sends to other executions."""

    record: InboundRecord
    command: Command
    commit: Commit | None = None
    outcome: CommandOutcome | None = None
    replay: bool = False
    """The commit is stored already (a redelivery or a repeat): publish it, do not append."""
    follow_ups: tuple[Command, ...] = ()

    @property
    def appends(self) -> bool:
        """Whether this answer has a new commit to append."""
        return self.commit is not None and not self.replay

    @property
    def rejected(self) -> bool:
        return self.outcome is not None and not self.outcome.accepted


@dataclass(slots=True)
class Outbound:
    """Everything the caller must publish before it may commit the batch's offsets."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    """New and re-published commits, in the order their events must go out."""
    tasks: list[WorkflowTask] = field(default_factory=list)
    outcomes: list[CommandOutcome] = field(default_factory=list)
    follow_ups: list[Command] = field(default_factory=list)
    caused_by: dict[str, str] = field(default_factory=dict)
    """The id of the command each follow-up (by its command id) answers: a follow-up
    continues that command's trace."""
    encoded: dict[int, bytes] = field(default_factory=dict)
    """JSON made already of this batch's events and outcomes, by the `id()` of the model
    (alive in this Outbound, so the id is not reused): the direct replies encode a
    run's STARTED event and the outcomes they send, and the records published next carry
    the same bytes (`outgoing_records`), not encoded a second time."""

    @property
    def events(self) -> list[Event]:
        return [e for c in self.commits for e in c.events]

    def add(self, answers: Iterable[Decided]) -> None:
        for d in answers:
            if d.commit is not None:
                self.commits.append(d.commit)
                self.tasks.extend(tasks_for(d.commit))
            if d.outcome is not None:
                self.outcomes.append(d.outcome)
            self.follow_ups.extend(d.follow_ups)
            for follow_up in d.follow_ups:  # rare: children, continue-as-new, reports
                self.caused_by[follow_up.command_id] = d.command.command_id
