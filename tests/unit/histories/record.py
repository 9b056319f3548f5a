"""Records the event streams in this folder by running real commands through `decide`.

Run it only to ADD a history: `PYTHONPATH=. .venv/bin/python tests/unit/histories/record.py`.
It never overwrites a file. The recorded files are the compatibility guard of
tests/unit/test_recorded_histories.py: if a change to the domain or the event schema
breaks one, the change breaks streams already stored in production; fix the change (or
write a migration), do not re-record the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.commands import COMMAND_ADAPTER, Command
from schemas.events import EVENT_LIST_ADAPTER, Event
from services.engine.domain import Context, ExecutionState, decide, fold, successor_commands
from services.engine.workflow_tasks import derived_commands

HERE = Path(__file__).parent
T0 = 1_718_000_000_000_000_000  # 2024-06-10T06:13:20Z
ISSUED = datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)


class Recorder:
    """Applies commands to several streams at a fixed pace and remembers everything."""

    def __init__(self) -> None:
        self.tick = 0
        self.streams: dict[str, list[Event]] = {}
        self.states: dict[str, ExecutionState] = {}
        self.successors: dict[str, list[dict[str, Any]]] = {}

    def ctx(self, state: ExecutionState | None, cmd: Command) -> Context:
        self.tick += 1
        history: tuple[Event, ...] = ()
        if cmd.type == "ResetExecution" and state is not None:
            history = tuple(e for e in self.streams[cmd.execution_id] if e.run_id == state.run_id)
        return Context(
            now_ns=T0 + self.tick * 1_250_000_000,
            new_run_id=f"0190a1b2-0000-7000-8000-{self.tick:012d}",
            new_execution_id=f"exec-{self.tick:04d}",
            successor_run_id=f"0190a1b2-5000-7000-8000-{self.tick:012d}",
            history=history,
        )

    def run(self, execution_id: str) -> str:
        return self.states[execution_id].run_id

    def apply(self, raw: dict[str, Any]) -> list[Command]:
        raw.setdefault("issued_at", ISSUED.isoformat())
        raw.setdefault("command_id", f"cmd-{self.tick + 1:04d}")
        cmd = COMMAND_ADAPTER.validate_python(raw)
        state = self.states.get(cmd.execution_id)
        ctx = self.ctx(state, cmd)
        events = decide(state, cmd, ctx)
        after = fold(events, state)
        assert after is not None
        self.streams.setdefault(cmd.execution_id, []).extend(events)
        self.states[cmd.execution_id] = after
        follow_ups = successor_commands(events, ctx, after) + derived_commands(events, ctx, after)
        if follow_ups:
            self.successors.setdefault(cmd.execution_id, []).append(
                {
                    "seq": events[0].seq,
                    "now_ns": ctx.now_ns,
                    "commands": [COMMAND_ADAPTER.dump_python(c, mode="json") for c in follow_ups],
                }
            )
        return follow_ups

    def save(self, name: str, description: str) -> None:
        path = HERE / f"{name}.json"
        if path.exists():
            print(f"kept {path.name} (recorded files are never rewritten)")
            return
        streams = []
        for execution_id, events in self.streams.items():
            stream: dict[str, Any] = {
                "execution_id": execution_id,
                "events": EVENT_LIST_ADAPTER.dump_python(events, mode="json"),
                "final_state": self.states[execution_id].model_dump(mode="json"),
            }
            if execution_id in self.successors:
                stream["successor_commands"] = self.successors[execution_id]
            streams.append(stream)
        document = {"description": description, "streams": streams}
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"recorded {path.name}")


def lifecycle(r: Recorder) -> None:
    e = "order-7731"
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": e,
            "user_id": "user-42",
            "payload": {
                "workflow_name": "process_order",
                "input": {"order_id": 7731, "items": [{"sku": "A-1", "qty": 2}]},
                "deployment_name": "orders-prod",
                "execution_timeout_seconds": 3600,
                "display_name": "Order 7731",
                "search_keys": {"customer": "acme", "region": None},
            },
        }
    )

    def report(**payload: Any) -> None:
        kind = "RecordActivityTask" if "activity_name" in payload else "RecordCustomTask"
        r.apply({"type": kind, "execution_id": e, "payload": {"run_id": r.run(e), **payload}})

    act = {"task_id": "act-reserve", "activity_name": "reserve_stock"}
    report(stage="started", input={"sku": "A-1", "qty": 2}, **act)
    report(stage="completed", result={"reserved": True}, **act)
    r.apply(
        {
            "type": "SignalExecution",
            "execution_id": e,
            "user_id": "user-7",
            "payload": {"name": "approve", "input": {"approved_by": "manager"}},
        }
    )
    review = {"custom_task_id": "review-1", "custom_task_type": "human_review"}
    report(stage="started", payload={"queue": "fraud"}, **review)
    report(stage="in_progress", payload={"progress": 0.5}, **review)
    report(stage="completed", payload={"verdict": "ok"}, **review)
    charge = {"task_id": "act-charge", "activity_name": "charge_card"}
    report(stage="started", input={"amount": 1999}, **charge)
    report(
        stage="retrying",
        attempt=1,
        failure={"message": "gateway timeout", "type": "TimeoutError"},
        **charge,
    )
    report(stage="completed", attempt=2, result={"charge_id": "ch_1"}, **charge)
    r.apply(
        {
            "type": "SignalExecution",
            "execution_id": e,
            "payload": {"name": "gift_wrap", "input": None},
        }
    )
    r.apply(
        {
            "type": "CompleteExecution",
            "execution_id": e,
            "payload": {"run_id": r.run(e), "result": {"status": "shipped", "total": 1999}},
        }
    )


def retry_to_success(r: Recorder) -> None:
    e = "sync-inventory-2024-06-10"
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": e,
            "user_id": "scheduler",
            "payload": {
                "workflow_name": "sync_inventory",
                "input": {"warehouse": "FR-1"},
                "retry_policy": {
                    "max_attempts": 3,
                    "initial_interval_seconds": 2.0,
                    "backoff_coefficient": 3.0,
                },
                "internal": True,
            },
        }
    )
    for attempt in (2, 3):
        failure = {"message": f"connection reset (attempt {attempt - 1})", "type": "OSError"}
        r.apply(
            {
                "type": "RecordActivityTask",
                "execution_id": e,
                "payload": {
                    "run_id": r.run(e),
                    "stage": "failed",
                    "task_id": f"act-fetch-{attempt - 1}",
                    "activity_name": "fetch_stock",
                    "failure": failure,
                },
            }
        )
        r.apply(
            {
                "type": "FailExecution",
                "execution_id": e,
                "payload": {"run_id": r.run(e), "failure": failure},
            }
        )
        r.apply(
            {
                "type": "RetryExecution",
                "execution_id": e,
                "payload": {"run_id": r.run(e), "attempt": attempt},
            }
        )
    r.apply(
        {
            "type": "RecordActivityTask",
            "execution_id": e,
            "payload": {
                "run_id": r.run(e),
                "stage": "completed",
                "task_id": "act-fetch-3",
                "activity_name": "fetch_stock",
                "result": {"rows": 1200},
            },
        }
    )
    r.apply(
        {
            "type": "CompleteExecution",
            "execution_id": e,
            "payload": {"run_id": r.run(e), "result": {"synced": 1200}},
        }
    )


def reset(r: Recorder) -> None:
    e = "onboarding-bob"
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": e,
            "user_id": "user-1",
            "payload": {
                "workflow_name": "onboard_user",
                "input": {"user": "bob"},
                "parent_execution_id": "hr-batch-12",
                "root_execution_id": "hr-root-1",
            },
        }
    )

    def activity(name: str, result: Any) -> None:
        r.apply(
            {
                "type": "RecordActivityTask",
                "execution_id": e,
                "payload": {
                    "run_id": r.run(e),
                    "stage": "completed",
                    "task_id": f"act-{name}",
                    "activity_name": name,
                    "result": result,
                },
            }
        )

    def signal(name: str) -> None:
        r.apply(
            {"type": "SignalExecution", "execution_id": e, "payload": {"name": name, "input": {}}}
        )

    activity("create_account", {"uid": 501})  # event 2
    signal("documents_uploaded")  # event 3
    activity("send_badge", {"badge": "B-9"})  # event 4
    signal("manager_assigned")  # event 5
    # Reset the open run to event 2: terminates run 1, replays the activity and both signals.
    r.apply(
        {
            "type": "ResetExecution",
            "execution_id": e,
            "user_id": "ops",
            "payload": {"event_id": 2, "reason": "badge service bug"},
        }
    )
    activity("send_badge", {"badge": "B-10"})
    r.apply(
        {
            "type": "CompleteExecution",
            "execution_id": e,
            "payload": {"run_id": r.run(e), "result": "done"},
        }
    )
    # Reset the closed run to its STARTED event (event 2 of a reset run), without signals.
    r.apply(
        {
            "type": "ResetExecution",
            "execution_id": e,
            "user_id": "ops",
            "payload": {"event_id": 2, "exclude_signals": True, "exclude_updates": True},
        }
    )
    r.apply({"type": "CancelExecution", "execution_id": e, "payload": {"reason": "replaced"}})


def continue_as_new(r: Recorder) -> None:
    e = "crawl-site-1"
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": e,
            "user_id": "user-9",
            "payload": {
                "workflow_name": "crawl",
                "input": {"page": 1},
                "deployment_name": "crawlers",
                "execution_timeout_seconds": 600,
                "retry_policy": {"max_attempts": 2},
            },
        }
    )
    r.apply(
        {
            "type": "RecordActivityTask",
            "execution_id": e,
            "payload": {
                "run_id": r.run(e),
                "stage": "completed",
                "task_id": "act-p1",
                "activity_name": "fetch_page",
                "result": {"links": 40},
            },
        }
    )
    [successor] = r.apply(
        {
            "type": "ContinueAsNew",
            "execution_id": e,
            "payload": {"run_id": r.run(e), "input": {"page": 2}},
        }
    )
    r.apply(COMMAND_ADAPTER.dump_python(successor, mode="json"))
    nxt = successor.execution_id
    r.apply(
        {
            "type": "CompleteExecution",
            "execution_id": nxt,
            "payload": {"run_id": r.run(nxt), "result": {"pages": 2}},
        }
    )
    # The first execution id is reused by a new start (allow_duplicate), then terminated.
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": e,
            "user_id": "user-9",
            "payload": {"workflow_name": "crawl", "input": {"page": 1}},
        }
    )
    r.apply({"type": "TerminateExecution", "execution_id": e, "payload": {"reason": "dup"}})


def worker_protocol(r: Recorder) -> None:
    """A parent and a child advanced by workflow tasks, as a worker SDK would send them."""
    e = "approval-1"

    def task(execution_id: str, *steps: dict[str, Any], **extra: Any) -> list[Command]:
        state = r.states[execution_id]
        payload = {"run_id": state.run_id, "task_seq": state.seq, "worker_id": "worker-a"}
        return r.apply(
            {
                "type": "CompleteWorkflowTask",
                "execution_id": execution_id,
                "payload": {**payload, "steps": list(steps)},
                **extra,
            }
        )

    def deliver(commands: list[Command]) -> None:
        for command in commands:
            deliver(r.apply(COMMAND_ADAPTER.dump_python(command, mode="json")))

    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": e,
            "user_id": "user-42",
            "payload": {
                "workflow_name": "approval",
                "input": {"amount": 1200},
                "deployment_name": "finance",
                "cancel_grace_seconds": 60,
            },
        }
    )
    check = {"kind": "activity", "activity_id": "1", "activity_name": "check_budget"}
    deliver(
        task(
            e,
            {**check, "stage": "started", "input": {"amount": 1200}},
            {**check, "stage": "completed", "result": {"ok": True}},
            {"kind": "marker", "marker_id": "2", "name": "side_effect", "value": "a1b2"},
            {"kind": "start_timer", "timer_id": "3", "duration_seconds": 3600},
            {
                "kind": "start_child",
                "child_execution_id": "approval-1-notify",
                "workflow_name": "notify",
                "input": {"to": "manager"},
                "parent_close_policy": "request_cancel",
            },
        )
    )
    deliver(task("approval-1-notify", {"kind": "complete", "result": {"sent": True}}))
    r.apply({"type": "SignalExecution", "execution_id": e, "payload": {"name": "approve"}})
    state = r.states[e]
    r.apply(
        {
            "type": "FailWorkflowTask",
            "execution_id": e,
            "payload": {
                "run_id": state.run_id,
                "task_seq": state.seq,
                "failure": {"message": "non-deterministic", "type": "NonDeterminismError"},
            },
        }
    )
    (retry_timer,) = [t for t in r.states[e].timers if t.startswith("workflow-task:")]
    r.apply(
        {
            "type": "FireTimer",
            "execution_id": e,
            "payload": {"run_id": r.run(e), "timer_id": retry_timer},
        }
    )
    task(
        e,
        {"kind": "update_accepted", "update_id": "u-1", "update_name": "raise", "input": 100},
        {"kind": "update_completed", "update_id": "u-1", "result": 1300},
        {"kind": "cancel_timer", "timer_id": "3"},
        command_id="update:req-1",
    )
    r.apply({"type": "CancelExecution", "execution_id": e, "payload": {"reason": "withdrawn"}})
    undo = {"kind": "activity", "activity_id": "4", "activity_name": "release_budget"}
    task(
        e,
        {**undo, "stage": "started", "input": None},
        {**undo, "stage": "completed", "result": None},
        {"kind": "cancel", "reason": "withdrawn"},
    )


SCENARIOS: dict[str, tuple[Callable[[Recorder], None], str]] = {
    "lifecycle": (
        lifecycle,
        "An order: start, activities (one retried), signals, a custom task, completion.",
    ),
    "retry_to_success": (
        retry_to_success,
        "A run fails twice, is retried by the timer each time, and completes on attempt 3.",
    ),
    "reset": (
        reset,
        "Reset of an open run (terminate + replay with signals), completion, reset of the "
        "closed run without signals, cancel.",
    ),
    "continue_as_new": (
        continue_as_new,
        "A run continues as new; the successor execution starts from the successor command "
        "and completes; the old execution id is then started again and terminated.",
    ),
    "worker_protocol": (
        worker_protocol,
        "Workflow tasks: eager activity, marker, timer, a child started, reported and "
        "completed; a signal; a failed workflow task retried by its timer; an update; a "
        "cancel request answered by compensation and a cancel step.",
    ),
}


def main() -> None:
    for name, (scenario, description) in SCENARIOS.items():
        recorder = Recorder()
        scenario(recorder)
        recorder.save(name, description)


if __name__ == "__main__":
    main()
