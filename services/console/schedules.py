"""`runstore schedules list|show|create|pause|unpause|trigger|delete`, over the API's
schedule routes (docs/timers.md, docs/api-gateway.md "Schedules")."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.console.common import (
    DEFAULT_URL,
    ApiKey,
    InputOpt,
    Output,
    OutputOpt,
    Url,
    api_client,
    app,
    json_input,
    out,
    print_json,
)

schedules_cli = typer.Typer(help="Schedules that start workflows.", no_args_is_help=True)

app.add_typer(schedules_cli, name="schedules")

_SCHEDULES = "/v1/workflows/schedules"


def _when(schedule: dict[str, Any]) -> str:
    every = [i["every"] for i in schedule.get("intervals") or []]
    return ", ".join([*(f"every {e}" for e in every), *(schedule.get("cron_expressions") or [])])


def _schedule_table(schedules: list[dict[str, Any]]) -> Table:
    table = Table("schedule id", "workflow", "state", "when", "input")
    for s in schedules:
        table.add_row(
            s["schedule_id"],
            s["workflow_name"],
            "paused" if s.get("paused") else "active",
            _when(s),
            str(s.get("input"))[:40],
        )
    return table


@schedules_cli.command("list")
def schedules_list(
    workflow: Annotated[str | None, typer.Option(help="Only this workflow's.")] = None,
    status: Annotated[str | None, typer.Option(help="active or paused.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Every schedule (all pages), sorted by id."""
    params: dict[str, Any] = {"page_size": 1000}
    if workflow:
        params["workflow_name"] = workflow
    if status:
        params["status"] = status
    found: list[dict[str, Any]] = []
    with api_client(url, api_key) as api:
        while True:
            page = api.get(_SCHEDULES, params=params)
            found.extend(page["schedules"])
            if not page.get("next_page_token"):
                break
            params["next_page_token"] = page["next_page_token"]
    if output is Output.json:
        print_json(found)
        return
    out.print(_schedule_table(found))


@schedules_cli.command("show")
def schedules_show(
    schedule_id: str,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """One schedule's definition."""
    with api_client(url, api_key) as api:
        found = api.get(f"{_SCHEDULES}/{schedule_id}")
    if output is Output.json:
        print_json(found)
        return
    out.print(_schedule_table([found]))


@schedules_cli.command("create")
def schedules_create(
    workflow: Annotated[str, typer.Argument(help="The workflow it starts.")],
    every: Annotated[
        list[str] | None, typer.Option(help="An interval such as 30s, 5m, 1h (repeatable).")
    ] = None,
    cron: Annotated[list[str] | None, typer.Option(help="A cron expression (repeatable).")] = None,
    schedule_id: Annotated[
        str | None, typer.Option("--id", help="Its id (default: made up).")
    ] = None,
    deployment: Annotated[str | None, typer.Option(help="The deployment it runs on.")] = None,
    input_json: InputOpt = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Create a schedule; prints its id."""
    if not (every or cron):
        raise typer.BadParameter("give --every or --cron")
    definition: dict[str, Any] = {
        "input": json_input(input_json),
        "intervals": [{"every": e} for e in every or []],
        "cron_expressions": list(cron or []),
    }
    body: dict[str, Any] = {"schedule": definition, "workflow_identifier": workflow}
    if schedule_id:
        body["schedule_id"] = schedule_id
    if deployment:
        body["deployment_name"] = deployment
    with api_client(url, api_key) as api:
        created = api.post(_SCHEDULES, body)
    if output is Output.json:
        print_json(created)
        return
    out.print(f"created schedule {created['schedule_id']}")


def _action(kind: str, done: str, doc: str) -> None:
    def run(schedule_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = "") -> None:
        with api_client(url, api_key) as api:
            if kind == "delete":
                api.delete(f"{_SCHEDULES}/{schedule_id}")
            else:
                api.post(f"{_SCHEDULES}/{schedule_id}/{kind}")
        out.print(f"{done} {schedule_id}")

    run.__doc__ = doc
    schedules_cli.command("unpause" if kind == "resume" else kind)(run)


_action("pause", "paused", "Pause a schedule: it starts nothing until unpaused.")
_action("resume", "unpaused", "Unpause a schedule.")
_action(
    "trigger",
    "triggered a run of",
    "Start a run of a schedule now, whatever its pause state and overlap policy.",
)
_action("delete", "deleted", "Delete a schedule.")
