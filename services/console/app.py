"""`runstore workflow|runs|events …`: operate a running stack from the shell (`dlq` is in
services/console/dlq_commands.py, `schedules` in schedules.py, `workers` in workers.py).

Every command reads the API's address and key from `--url`/`--api-key` or
RUNSTORE_URL / RUNSTORE_API_KEY; read commands take `--output json` for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from services.console.client import ApiError, RunstoreApi
from services.console.common import (
    DEFAULT_URL,
    ApiKey,
    InputOpt,
    Output,
    OutputOpt,
    Url,
    api_client,
    app,
    err,
    json_input,
    out,
    print_json,
)

workflow_cli = typer.Typer(help="Start and command workflow executions.", no_args_is_help=True)
runs_cli = typer.Typer(help="Read runs and their histories.", no_args_is_help=True)
events_cli = typer.Typer(help="Follow events live.", no_args_is_help=True)
app.add_typer(workflow_cli, name="workflow")
app.add_typer(runs_cli, name="runs")
app.add_typer(events_cli, name="events")


# --- workflow -----------------------------------------------------------------------


@workflow_cli.command("start")
def workflow_start(
    name: str,
    input: InputOpt = None,
    execution_id: Annotated[str | None, typer.Option("--id", help="Execution id.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Start (execute) a workflow."""
    body: dict[str, Any] = {"input": json_input(input), "wait_for_result": wait}
    if execution_id:
        body["execution_id"] = execution_id
    with api_client(url, api_key) as api:
        started = api.post(f"/v1/workflows/{name}/execute", body)
    if output is Output.json:
        print_json(started)
    else:
        out.print(
            f"started [bold]{started['execution_id']}[/bold] run {started.get('run_id')} "
            f"status {_status(started.get('status'))}"
        )


def _command(path: str, done: str) -> Callable[..., None]:
    def run(execution_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = "") -> None:
        with api_client(url, api_key) as api:
            api.post(f"/v1/workflows/executions/{execution_id}/{path}")
        out.print(f"{done} {execution_id}")

    return run


workflow_cli.command("cancel", help="Cancel an execution's current run.")(
    _command("cancel", "cancel requested for")
)
workflow_cli.command("terminate", help="Terminate an execution's current run.")(
    _command("terminate", "terminated")
)


def _invocation(kind: str, show: Callable[[str, str, Any], None]) -> Callable[..., None]:
    """A signal, query or update: `{name, input}` to the execution; `show` reports the
    reply."""

    def run(
        execution_id: str,
        name: str,
        input: InputOpt = None,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = "",
    ) -> None:
        with api_client(url, api_key) as api:
            reply = api.post(
                f"/v1/workflows/executions/{execution_id}/{kind}",
                {"name": name, "input": json_input(input)},
            )
        show(execution_id, name, reply)

    return run


def _signal_accepted(execution_id: str, name: str, _: Any) -> None:
    out.print(f"signal {name!r} accepted by {execution_id}")


def _reply(_: str, __: str, reply: Any) -> None:
    print_json(reply)


workflow_cli.command("signal", help="Send a signal to an execution.")(
    _invocation("signals", _signal_accepted)
)
workflow_cli.command(
    "query", help="Ask a running execution a query (answered by its worker); prints the reply."
)(_invocation("queries", _reply))
workflow_cli.command("update", help="Send an update to a running execution; prints the reply.")(
    _invocation("updates", _reply)
)


@workflow_cli.command("reset")
def workflow_reset(
    execution_id: str,
    event_id: Annotated[int, typer.Option(help="Event number to reset to (1 = start).")],
    reason: Annotated[str | None, typer.Option()] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Reset an execution to an event of its latest run: a new run starts from there."""
    with api_client(url, api_key) as api:
        api.post(
            f"/v1/workflows/executions/{execution_id}/reset",
            {"event_id": event_id, "reason": reason},
        )
    out.print(f"reset {execution_id} to event {event_id}")


# --- runs ---------------------------------------------------------------------------

_STATUS_STYLE = {
    "RUNNING": "cyan",
    "RETRYING_AFTER_ERROR": "yellow",
    "COMPLETED": "green",
    "FAILED": "red",
    "CANCELED": "magenta",
    "TERMINATED": "red",
    "TIMED_OUT": "red",
    "CONTINUED_AS_NEW": "blue",
}


def _status(status: str | None) -> str:
    style = _STATUS_STYLE.get(status or "", "white")
    return f"[{style}]{status}[/{style}]"


@runs_cli.command("list")
def runs_list(
    workflow: Annotated[str | None, typer.Option(help="Workflow name.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Repeat for several.")] = None,
    root_execution_id: Annotated[str | None, typer.Option()] = None,
    search: Annotated[str | None, typer.Option(help="Text in ids or names.")] = None,
    deployment: Annotated[str | None, typer.Option()] = None,
    user: Annotated[str | None, typer.Option(help="A user id, or 'current'.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Workflow tag (repeatable).")] = None,
    search_key: Annotated[list[str] | None, typer.Option(help="key=value (repeatable).")] = None,
    start_after: Annotated[str | None, typer.Option(help="ISO time.")] = None,
    start_before: Annotated[str | None, typer.Option(help="ISO time.")] = None,
    end_after: Annotated[str | None, typer.Option(help="ISO time.")] = None,
    end_before: Annotated[str | None, typer.Option(help="ISO time.")] = None,
    sort_by: Annotated[str, typer.Option(help="start_time or end_time")] = "start_time",
    order: Annotated[str, typer.Option(help="asc or desc")] = "desc",
    include_internal: Annotated[bool, typer.Option()] = True,
    page_size: Annotated[int, typer.Option()] = 50,
    page_token: Annotated[str | None, typer.Option(help="next_page_token of a page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """List runs with every filter of list_runs; one page, or all with --all."""
    params: dict[str, Any] = {
        "workflow_identifier": workflow,
        "status": status,
        "root_execution_id": root_execution_id,
        "search": search,
        "deployment_name": deployment,
        "user_id": user,
        "workflow_tags": tag,
        "search_key": search_key,
        "start_time_after": start_after,
        "start_time_before": start_before,
        "end_time_after": end_after,
        "end_time_before": end_before,
        "sort_by": sort_by,
        "order": order,
        "include_internal": str(include_internal).lower(),
        "page_size": page_size,
    }
    params = {k: v for k, v in params.items() if v is not None}
    rows: list[dict[str, Any]] = []
    token = page_token
    with api_client(url, api_key) as api:
        while True:
            page = api.get("/v1/workflows/runs", {**params, "next_page_token": token or ""})
            rows.extend(page["executions"])
            token = page.get("next_page_token")
            if not (all_pages and token):
                break
    if output is Output.json:
        print_json({"executions": rows, "next_page_token": token})
        return
    table = Table("execution", "run", "workflow", "status", "started", "ended", "user")
    for r in rows:
        table.add_row(
            r["execution_id"],
            r.get("run_id") or "",
            r["workflow_name"],
            _status(r.get("status")),
            str(r.get("start_time") or ""),
            str(r.get("end_time") or ""),
            r.get("user_id") or "",
        )
    out.print(table)
    if token:
        err.print(f"next page: --page-token {token}")


def _run_or_execution(api: RunstoreApi, ident: str) -> dict[str, Any]:
    """A run by run id, else the latest run of an execution by execution id."""
    try:
        found: dict[str, Any] = api.get(f"/v1/workflows/runs/{ident}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        found = api.get(f"/v1/workflows/executions/{ident}")
    return found


@runs_cli.command("show")
def runs_show(
    ident: Annotated[str, typer.Argument(help="A run id or an execution id.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """One run: status, times, input-free summary and result."""
    with api_client(url, api_key) as api:
        run = _run_or_execution(api, ident)
    if output is Output.json:
        print_json(run)
        return
    table = Table(show_header=False, box=None)
    for k, v in run.items():
        shown = _status(v) if k == "status" else json.dumps(v, default=str)
        table.add_row(f"[bold]{k}[/bold]", shown if k == "status" else str(shown))
    out.print(table)


def _event_summary(event: dict[str, Any]) -> str:
    attrs = event.get("attributes") or {}
    text = json.dumps(attrs, default=str, separators=(",", ":"))
    return text if len(text) <= 100 else text[:97] + "..."


@runs_cli.command("history")
def runs_history(
    ident: Annotated[str, typer.Argument(help="A run id or an execution id.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """A run's history as a timeline, oldest first (all pages)."""
    events: list[dict[str, Any]] = []
    with api_client(url, api_key) as api:
        run = _run_or_execution(api, ident)
        token: str | None = None
        while True:
            params = {"next_page_token": token} if token else None
            page = api.get(f"/v1/workflows/runs/{run['run_id']}/history", params)
            events.extend(page["events"])
            token = page.get("next_page_token")
            if not token:
                break
    if output is Output.json:
        print_json({"run_id": run["run_id"], "events": events})
        return
    out.print(
        f"[bold]{run['workflow_name']}[/bold] {run['execution_id']} run {run['run_id']} "
        f"{_status(run.get('status'))}"
    )
    for e in events:
        ns = e.get("timestamp_ns")
        at = datetime.fromtimestamp(ns / 1e9, UTC).isoformat() if ns else ""
        out.print(
            f"  {e.get('event_number', ''):>4} {str(at)[:23]:23} "
            f"[bold]{e.get('type', e.get('event_type', '?'))}[/bold] {_event_summary(e)}",
            highlight=False,
        )


# --- events -------------------------------------------------------------------------


@events_cli.command("tail")
def events_tail(
    execution_id: Annotated[
        str | None, typer.Option("--execution", help="Only this execution's events.")
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow's events.")] = None,
    last_event_id: Annotated[
        str | None, typer.Option(help="Resume after this stream id (printed with each event).")
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(help="Resume from the id stored here, and store each event's id in it."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Follow events live over the API's server-sent events; resumable by stream id."""
    if state_file is not None and last_event_id is None and state_file.exists():
        last_event_id = state_file.read_text().strip() or None
    if execution_id:
        path, params = f"/v1/workflows/executions/{execution_id}/stream", {}
    else:
        path, params = "/v1/workflows/events/stream", {"workflow_name": workflow or "*"}
    seen = 0
    with api_client(url, api_key) as api:
        try:
            for ev in api.stream(path, params, last_event_id=last_event_id):
                if ev.event == "error":
                    err.print(f"[red]stream error[/red] {ev.data}")
                    raise typer.Exit(1)
                if output is Output.json:
                    out.print(json.dumps({"id": ev.id, "data": ev.data}), soft_wrap=True)
                else:
                    data: dict[str, Any] = ev.data if isinstance(ev.data, dict) else {}
                    nested = data.get("data")
                    inner: dict[str, Any] = nested if isinstance(nested, dict) else data
                    out.print(
                        f"{ev.id or '-'}  {inner.get('workflow_exec_id', '')} "
                        f"[bold]{inner.get('event_type', data.get('event_type', '?'))}[/bold]",
                        highlight=False,
                    )
                if state_file is not None and ev.id:
                    state_file.write_text(ev.id)
                seen += 1
                if limit is not None and seen >= limit:
                    break
        except KeyboardInterrupt:
            pass


# The other command groups register themselves on `app` when imported.
from services.console import dlq_commands, schedules, workers  # noqa: E402

__all__ = ["app", "dlq_commands", "schedules", "workers"]
