"""`runstore schedules …` and `runstore workers list`: schedules and the workers serving
each deployment, through the HTTP API (docs/timers.md#schedules, docs/catalogue.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.console.client import RunstoreApi
from services.console.common import (
    DEFAULT_URL,
    ApiKey,
    InputOpt,
    Output,
    OutputOpt,
    Url,
    api_session,
    json_input,
    out,
    print_json,
)

schedules_cli = typer.Typer(help="List, create and control schedules.", no_args_is_help=True)
workers_cli = typer.Typer(help="The workers serving each deployment.", no_args_is_help=True)

SCHEDULES = "/v1/workflows/schedules"


def _schedule_row(s: dict[str, Any]) -> tuple[str, ...]:
    every = [i["every"] for i in s.get("intervals") or []]
    when = ", ".join([*every, *(s.get("cron_expressions") or [])])
    upcoming = s.get("future_executions") or []
    next_at = str(upcoming[0]["scheduled_at"])[:19] if upcoming else ""
    state = "[yellow]paused[/yellow]" if s.get("paused") else "[green]active[/green]"
    return (s["schedule_id"], s["workflow_name"], state, when, next_at)


@schedules_cli.command("list")
def schedules_list(
    workflow: Annotated[str | None, typer.Option(help="Workflow name.")] = None,
    status: Annotated[str | None, typer.Option(help="active or paused")] = None,
    user: Annotated[str | None, typer.Option(help="A user id, or 'current'.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Every schedule (all pages), sorted by id."""
    params = {"workflow_name": workflow, "status": status, "user_id": user, "page_size": 200}
    found: list[dict[str, Any]] = []
    with api_session(url, api_key) as api:
        token: str | None = None
        while True:
            query = {k: v for k, v in {**params, "next_page_token": token}.items() if v}
            page = api.get(SCHEDULES, params=query)
            found += page["schedules"]
            token = page.get("next_page_token")
            if not token:
                break
    if output is Output.json:
        print_json(found)
        return
    table = Table("schedule", "workflow", "state", "every / cron", "next")
    for s in found:
        table.add_row(*_schedule_row(s))
    out.print(table)


@schedules_cli.command("show")
def schedules_show(
    schedule_id: str,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """One schedule: its definition, its next and its recent executions."""
    with api_session(url, api_key) as api:
        schedule = api.get(f"{SCHEDULES}/{schedule_id}")
    if output is Output.json:
        print_json(schedule)
        return
    table = Table(show_header=False, box=None)
    for key in ("schedule_id", "workflow_name", "paused", "cron_expressions", "intervals"):
        table.add_row(f"[bold]{key}[/bold]", str(schedule.get(key)))
    for run in schedule.get("recent_executions") or []:
        table.add_row("[bold]ran[/bold]", f"{run['scheduled_at']} → {run['execution_id']}")
    for run in schedule.get("future_executions") or []:
        table.add_row("[bold]next[/bold]", str(run["scheduled_at"]))
    out.print(table)


@schedules_cli.command("create")
def schedules_create(
    workflow: Annotated[str, typer.Argument(help="The workflow each run starts.")],
    cron: Annotated[list[str] | None, typer.Option(help="Cron expression (repeatable).")] = None,
    every: Annotated[
        list[str] | None, typer.Option(help="Interval such as 30s, 5m, 1h (repeatable).")
    ] = None,
    schedule_id: Annotated[str | None, typer.Option("--id", help="The schedule's id.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Deployment that runs it.")] = None,
    input_json: InputOpt = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Create a schedule of `workflow`; prints its id."""
    if not (cron or every):
        raise typer.BadParameter("give --cron or --every")
    definition: dict[str, Any] = {
        "input": json_input(input_json),
        "cron_expressions": cron or [],
        "intervals": [{"every": e} for e in every or []],
    }
    body = {
        "schedule": definition,
        "workflow_identifier": workflow,
        "schedule_id": schedule_id,
        "deployment_name": deployment,
    }
    with api_session(url, api_key) as api:
        created = api.post(SCHEDULES, {k: v for k, v in body.items() if v is not None})
    out.print(created["schedule_id"])


def _action(verb: str, done: str) -> None:
    @schedules_cli.command(verb)
    def act(schedule_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = "") -> None:
        with api_session(url, api_key) as api:
            _send(api, verb, schedule_id)
        out.print(f"{schedule_id} {done}")

    act.__doc__ = f"{verb.capitalize()} a schedule."


def _send(api: RunstoreApi, verb: str, schedule_id: str) -> None:
    if verb == "delete":
        api.delete(f"{SCHEDULES}/{schedule_id}")
    else:
        api.post(f"{SCHEDULES}/{schedule_id}/{verb}", {} if verb == "trigger" else None)


for _verb, _done in (
    ("pause", "paused"),
    ("resume", "resumed"),
    ("trigger", "triggered"),
    ("delete", "deleted"),
):
    _action(_verb, _done)


@workers_cli.command("list")
def workers_list(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment.")] = None,
    inactive: Annotated[
        bool, typer.Option(help="Also workers that stopped sending heartbeats.")
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Workers by deployment: id, host, version, workflows served, last heartbeat."""
    with api_session(url, api_key) as api:
        if deployment is not None:
            names = [deployment]
        else:
            listed = api.get("/v1/workflows/deployments", params={"active_only": False})
            names = [d["name"] for d in listed["deployments"]]
        rows: list[dict[str, Any]] = []
        for name in names:
            path = f"/v1/workflows/deployments/{name}/workers"
            params = {"worker_status": "all" if inactive else "active", "limit": 1000}
            rows += [{**w, "deployment": name} for w in api.get(path, params=params)["workers"]]
    if output is Output.json:
        print_json(rows)
        return
    table = Table("deployment", "worker", "active", "host", "version", "workflows", "last seen")
    for w in rows:
        table.add_row(
            w["deployment"],
            str(w["name"]),
            "[green]yes[/green]" if w.get("is_active") else "[red]no[/red]",
            str(w.get("host") or ""),
            str(w.get("version") or ""),
            ", ".join(_workflow_name(n) for n in w.get("workflows") or []),
            str(w.get("last_heartbeat") or "")[:19],
        )
    out.print(table)


def _workflow_name(served: Any) -> str:
    return str(served.get("name") if isinstance(served, dict) else served)
