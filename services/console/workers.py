"""`runstore workers list`: the workers of the catalogue's deployments (docs/catalogue.md),
over the API's deployments routes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from services.console.common import (
    DEFAULT_URL,
    ApiKey,
    Output,
    OutputOpt,
    Url,
    api_client,
    app,
    out,
    print_json,
)

workers_cli = typer.Typer(help="Workers registered in the catalogue.", no_args_is_help=True)
app.add_typer(workers_cli, name="workers")


@workers_cli.command("list")
def workers_list(
    deployment: Annotated[str | None, typer.Option(help="Only this deployment's.")] = None,
    all_workers: Annotated[
        bool, typer.Option("--all", help="Also workers that stopped heartbeating.")
    ] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = "",
    output: OutputOpt = Output.table,
) -> None:
    """Workers of every deployment (or one): live ones, or all on record with --all."""
    status = "all" if all_workers else "active"
    rows: list[dict[str, Any]] = []
    with api_client(url, api_key) as api:
        if deployment:
            names = [deployment]
        else:
            listed = api.get(
                "/v1/workflows/deployments", params={"active_only": "false", "limit": 1000}
            )
            names = [d["name"] for d in listed["deployments"]]
        for name in names:
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"worker_status": status, "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = api.get(f"/v1/workflows/deployments/{name}/workers", params=params)
                rows.extend({"deployment": name, **w} for w in page["workers"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    if output is Output.json:
        print_json(rows)
        return
    table = Table(
        "deployment", "worker", "active", "host", "pid", "version", "heartbeat", "workflows"
    )
    for w in rows:
        workflows = [
            str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in w["workflows"]
        ]
        table.add_row(
            w["deployment"],
            str(w["name"]),
            "yes" if w["is_active"] else "no",
            str(w.get("host") or ""),
            str(w.get("pid") or ""),
            str(w.get("version") or ""),
            str(w.get("last_heartbeat") or "")[:19],
            ", ".join(workflows),
        )
    out.print(table)
