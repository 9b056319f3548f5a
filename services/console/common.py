"""What every `runstore` operator command shares: the root typer app, consoles, the
`--url`/`--api-key`/`--output` options and the API client's error handling."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console

from services.console.client import ApiError, RunstoreApi

app = typer.Typer(
    name="runstore",
    help="Runstore: run a service, or operate a running stack.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

out = Console()
err = Console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"


Url = Annotated[
    str, typer.Option("--url", envvar="RUNSTORE_URL", help="The Runstore API's base URL.")
]
ApiKey = Annotated[
    str, typer.Option("--api-key", envvar="RUNSTORE_API_KEY", help="A bearer API key.")
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
InputOpt = Annotated[
    str | None, typer.Option("--input", "-i", help="JSON object given to the workflow.")
]

DEFAULT_URL = "http://127.0.0.1:8080"


def json_input(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from exc


@contextmanager
def api_client(url: str, key: str) -> Iterator[RunstoreApi]:
    api = RunstoreApi(url or DEFAULT_URL, key or "dev")
    try:
        yield api
    except ApiError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        api.close()


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))
