"""What the decorators record: workflow classes, their handlers, and activities."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, get_type_hints

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

HANDLER_MARK = "__runstore_handler__"
RUN_MARK = "__runstore_run__"


class WorkflowDefinitionError(TypeError):
    """A workflow or activity was declared in a way the SDK cannot run."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed activity is retried: attempt n waits initial * coefficient**(n-1), capped.

    `maximum_attempts` 0 means unlimited. An error whose type name is listed in
    `non_retryable_error_types` (or an `ApplicationError(non_retryable=True)`) is not retried.
    """

    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    maximum_interval: timedelta | None = timedelta(seconds=100)
    maximum_attempts: int = 3
    non_retryable_error_types: tuple[str, ...] = ()

    def delay_after(self, failed_attempt: int) -> float:
        delay = self.initial_interval.total_seconds() * self.backoff_coefficient ** (
            failed_attempt - 1
        )
        if self.maximum_interval is not None:
            delay = min(delay, self.maximum_interval.total_seconds())
        return delay

    def allows_another(self, failed_attempt: int) -> bool:
        return self.maximum_attempts == 0 or failed_attempt < self.maximum_attempts


@dataclass(frozen=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Awaitable[Any]]
    start_to_close_timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    retry_policy: RetryPolicy


@dataclass(frozen=True)
class Handler:
    kind: str  # "signal" | "query" | "update"
    name: str
    method: Callable[..., Any]
    validator: Callable[..., Any] | None = None
    description: str | None = None


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    cls: type
    run_method: Callable[..., Awaitable[Any]]
    display_name: str | None = None
    description: str | None = None
    signals: dict[str, Handler] = field(default_factory=dict)
    queries: dict[str, Handler] = field(default_factory=dict)
    updates: dict[str, Handler] = field(default_factory=dict)

    def input_schema(self) -> dict[str, Any] | None:
        return _param_schema(self.run_method)

    def output_schema(self) -> dict[str, Any] | None:
        hint = _hints(self.run_method).get("return")
        return None if hint is None else TypeAdapter(hint).json_schema()


def definition_of(target: Any) -> WorkflowDefinition:
    """The definition recorded by `@workflow.define` on a class (or its instance)."""
    cls = target if isinstance(target, type) else type(target)
    found = getattr(cls, "__runstore_workflow__", None)
    if not isinstance(found, WorkflowDefinition):
        raise WorkflowDefinitionError(f"{cls.__name__} is not decorated with @workflow.define")
    return found


def build_definition(
    cls: type, name: str, display_name: str | None, description: str | None
) -> WorkflowDefinition:
    run: Callable[..., Awaitable[Any]] | None = None
    handlers: dict[str, dict[str, Handler]] = {"signal": {}, "query": {}, "update": {}}
    for klass in reversed(cls.__mro__):
        for attr in vars(klass).values():
            if getattr(attr, RUN_MARK, False):
                run = attr
            mark = getattr(attr, HANDLER_MARK, None)
            if isinstance(mark, Handler):
                handlers[mark.kind][mark.name] = mark
    if run is None:
        raise WorkflowDefinitionError(
            f"workflow {name!r} ({cls.__name__}) has no method decorated with @workflow.run"
        )
    if not inspect.iscoroutinefunction(run):
        raise WorkflowDefinitionError(f"workflow {name!r}: the run method must be `async def`")
    return WorkflowDefinition(
        name=name,
        cls=cls,
        run_method=run,
        display_name=display_name,
        description=description or inspect.getdoc(cls),
        signals=handlers["signal"],
        queries=handlers["query"],
        updates=handlers["update"],
    )


# --- calling user code with JSON values -----------------------------------------------


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return get_type_hints(fn)
    except Exception:  # unresolvable forward references: treat as unannotated
        return {}


def _params(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name in {"self", "cls"}:
        params = params[1:]
    return [p for p in params if p.kind not in {p.VAR_POSITIONAL, p.VAR_KEYWORD}]


def _param_schema(fn: Callable[..., Any]) -> dict[str, Any] | None:
    params = _params(fn)
    hints = _hints(fn)
    if not params:
        return None
    if len(params) == 1:
        hint = hints.get(params[0].name, Any)
        return TypeAdapter(hint).json_schema()
    return {
        "type": "object",
        "properties": {p.name: TypeAdapter(hints.get(p.name, Any)).json_schema() for p in params},
        "required": [p.name for p in params if p.default is inspect.Parameter.empty],
    }


@dataclass(frozen=True, slots=True)
class _Signature:
    """What calling a function with JSON values needs of it, worked out once: reading type
    hints (an `eval` per string annotation) and building a pydantic TypeAdapter cost
    about a millisecond, more than the rest of a one-activity workflow task."""

    names: tuple[str, ...]
    """Its parameters but `self`/`cls`, `*args` and `**kwargs`."""
    adapters: tuple[TypeAdapter[Any] | None, ...]
    """Per parameter, its annotation's adapter; None when it has none."""
    returns: TypeAdapter[Any] | None
    """The return annotation's adapter; None when it has none (or `Any`)."""


@functools.lru_cache(maxsize=4096)
def _signature_of(fn: Callable[..., Any]) -> _Signature:
    params = _params(fn)
    hints = _hints(fn)
    returns = hints.get("return")
    return _Signature(
        names=tuple(p.name for p in params),
        adapters=tuple(
            None if hints.get(p.name) is None else TypeAdapter(hints[p.name]) for p in params
        ),
        returns=None if returns is None or returns is Any else TypeAdapter(returns),
    )


def _signature(fn: Callable[..., Any]) -> _Signature:
    # Keyed by the function itself: a bound method is a new object on every access (its
    # signature without `self` is the function's, see `_params`).
    target = getattr(fn, "__func__", fn)
    try:
        return _signature_of(target)
    except TypeError:  # an unhashable callable (or a hint pydantic refuses: raised again)
        return _signature_of.__wrapped__(target)


def call_arguments(fn: Callable[..., Any], value: Any) -> tuple[list[Any], dict[str, Any]]:
    """Arguments for `fn` (a method: `self` is skipped) from one JSON value.

    No parameter: nothing is passed. One: the value, validated into its annotation. More:
    the value must be an object whose keys name them.
    """
    sig = _signature(fn)
    if not sig.names:
        return [], {}
    if len(sig.names) == 1:
        adapter = sig.adapters[0]
        return [value if adapter is None else adapter.validate_python(value)], {}
    if not isinstance(value, dict):
        names = ", ".join(sig.names)
        raise TypeError(f"{fn.__qualname__} takes ({names}): give an object with those keys")
    kwargs = {}
    for name, adapter in zip(sig.names, sig.adapters, strict=True):
        if name in value:
            raw = value[name]
            kwargs[name] = raw if adapter is None else adapter.validate_python(raw)
    return [], kwargs


def to_json(value: Any) -> Any:
    """A value as JSON data (pydantic models, dataclasses, datetimes … converted)."""
    return to_jsonable_python(value)


def from_json(fn: Callable[..., Any], value: Any) -> Any:
    """A JSON result as `fn`'s return annotation says (the value itself if none)."""
    adapter = _signature(fn).returns
    return value if adapter is None else adapter.validate_python(value)


def args_to_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Activity arguments as recorded in the history: one value, a list, or an object."""
    if kwargs:
        return to_json({**{str(i): a for i, a in enumerate(args)}, **kwargs})
    if len(args) == 1:
        return to_json(args[0])
    return to_json(list(args)) if args else None
