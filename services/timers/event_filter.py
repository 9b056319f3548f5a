"""Which events the timers service must read: the rest are skipped before decoding.

The engine puts each event's type in the record's `event-type` header. Most events of a
run (a workflow task's completion, activities, signals, updates, …) start or stop no timer,
yet decoding an event with the full model is most of what the timers service spends on it
(a one-activity workflow: 5 events, 2 of which can matter). A record without the header
(another producer, an older engine) is decoded as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.events import CLOSING_EVENT_TYPES, EventType

TIMER_EVENT_TYPES: frozenset[str] = frozenset(
    {
        # The event types `schemas.timers.timer_changes` starts or stops timers on; keep
        # the two in step (tests/unit/test_timers.py checks every recorded history).
        EventType.WORKFLOW_EXECUTION_STARTED,  # execution timeout
        EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED,
        EventType.WORKFLOW_EXECUTION_RETRY_STARTED,
        EventType.TIMER_STARTED,
        EventType.TIMER_FIRED,
        EventType.TIMER_CANCELED,
        EventType.WORKFLOW_TASK_FAILED,  # a failed task's retry
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,  # the cancel deadline
        *CLOSING_EVENT_TYPES,  # a closed run's timers go
    }
)

_TYPE_HEADER = "event-type"


def may_change_timers(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """False only when the record says it is an event of a type no timer depends on."""
    for key, value in headers or ():
        if key == _TYPE_HEADER:
            return value.decode("ascii", "replace") in TIMER_EVENT_TYPES
    return True
