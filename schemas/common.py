"""Types shared by commands, events, outcomes and the HTTP contract."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "TERMINAL_STATUSES",
    "ExecutionStatus",
    "Failure",
    "FrozenModel",
    "Identifier",
    "JsonValue",
    "ParentClosePolicy",
    "Payload",
    "RetryPolicy",
    "check_trusted_models",
]


class ParentClosePolicy(StrEnum):
    """What closing a parent's run does to a child it started that is still open."""

    TERMINATE = "terminate"
    """TerminateExecution of the child (the default)."""
    REQUEST_CANCEL = "request_cancel"
    """CancelExecution of the child: its code gets a chance to clean up."""
    ABANDON = "abandon"
    """Nothing: the child runs on."""


class FrozenModel(BaseModel):
    """Base of every contract: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, **fields: Any) -> Self:
        """An instance made of values that are valid already, without validating them
        again: for what the engine builds on its hot path out of validated parts (a
        commit of decided events, a task of a commit's event).

        Every field must be given, in declaration order: the JSON follows the order of
        the instance's fields, and a missing one would only fail when serialised. That
        order is fixed by the calling code, so the tests check it for each call site:
        they turn on `check_trusted_models`, which also validates each instance and
        requires the same value and the same JSON. Nothing is checked otherwise: this
        must cost less than pydantic-core's validation of a small model (~1 µs).
        """
        # Every field is given, so every instance of a class has the same set of fields
        # set: one set per class, shared (building it was ~0.5 µs per instance of a model
        # of 27 fields). Pydantic never changes it in place on a frozen model: a copy
        # (`model_copy`, `copy`, `deepcopy`) copies it before adding to it.
        fields_set = _all_fields_set.get(cls)
        if fields_set is None:
            fields_set = _all_fields_set[cls] = set(cls.model_fields)
        return _built(cls, fields, fields_set)

    def replaced(self, **update: Any) -> Self:
        """`model_copy(update=update)` for the engine's hot path (a state moved on by each
        event it folds): the same instance — fields in the same order, the same fields set,
        values not validated — without pydantic's generic copy (which also copies extra
        and private attributes, which no contract has).

        As with `trusted`, the values must be valid already; under the tests' check each
        instance is validated too.
        """
        fields_set = self.__pydantic_fields_set__
        if not update.keys() <= fields_set:
            fields_set = fields_set | update.keys()
        # Shared when nothing is added, as `trusted` shares it.
        return _built(type(self), {**self.__dict__, **update}, fields_set)


_new_object = object.__new__
_set_attribute = object.__setattr__
_M = TypeVar("_M", bound=FrozenModel)


def _built(cls: type[_M], fields: dict[str, Any], fields_set: set[str]) -> _M:
    """An instance of `cls` holding `fields` as they are (`trusted`, `replaced`); under the
    tests' check it is validated too."""
    instance = _new_object(cls)
    _set_attribute(instance, "__dict__", fields)
    _set_attribute(instance, "__pydantic_fields_set__", fields_set)
    _set_attribute(instance, "__pydantic_extra__", None)
    _set_attribute(instance, "__pydantic_private__", None)
    if _checks.on:
        _check_trusted(instance)
    return instance


_all_fields_set: dict[type[FrozenModel], set[str]] = {}


class _Checks:
    on = False


_checks = _Checks()


def check_trusted_models(on: bool) -> None:
    """Validate every `FrozenModel.trusted` instance too (tests): a value that validation
    would convert or refuse fails at once instead of reaching a store or a topic."""
    _checks.on = on


def _check_trusted(instance: FrozenModel) -> None:
    model = type(instance)
    names = tuple(model.model_fields)
    if tuple(instance.__dict__) != names:
        raise TypeError(f"{model.__name__}.trusted takes every field in order: {names}")
    validated = model.model_validate(instance.__dict__)
    if validated != instance or validated.model_dump_json() != instance.model_dump_json():
        raise AssertionError(f"{type(instance).__name__}.trusted was given invalid values")


class ExecutionStatus(StrEnum):
    """Statuses as the public API names them (case-sensitive)."""

    RUNNING = "RUNNING"
    RETRYING_AFTER_ERROR = "RETRYING_AFTER_ERROR"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TERMINATED = "TERMINATED"
    TIMED_OUT = "TIMED_OUT"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_open(self) -> bool:
        """Whether a run in this status can still change (RUNNING, RETRYING_AFTER_ERROR):
        the opposite of `is_terminal`."""
        return self not in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELED,
        ExecutionStatus.TERMINATED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.CONTINUED_AS_NEW,
    }
)

# The SDK puts ids into URL paths without escaping them (API.md §2), so an id holding
# one of these characters could never be addressed again: refuse it at creation.
_FORBIDDEN_ID_CHARS = re.compile(r"[/?#%\s]")
# Control characters (C0, DEL, C1) and the bidirectional controls: invisible or
# reordering in logs, terminals and UIs, so two ids that look alike would differ.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _check_identifier(value: str) -> str:
    if _FORBIDDEN_ID_CHARS.search(value):
        raise ValueError("must not contain '/', '?', '#', '%' or whitespace")
    if _CONTROL_CHARS.search(value):
        raise ValueError("must not contain control or bidirectional-control characters")
    if value in {".", ".."}:
        raise ValueError("must not be '.' or '..'")
    return value


Identifier = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_check_identifier)]


class Payload(FrozenModel):
    """A JSON value wrapped the way the public event model wants it."""

    type: str = "json"
    value: Any = None
    encoding_options: list[str] | None = None


class Failure(FrozenModel):
    """Why something failed: a message a human reads, a type a program matches."""

    message: str
    type: str | None = None
    details: JsonValue = None


class RetryPolicy(FrozenModel):
    """How a failed run is retried: attempt n waits initial * coefficient**(n-1), capped."""

    max_attempts: int = Field(default=3, ge=1, le=1000)
    initial_interval_seconds: float = Field(default=1.0, ge=0)
    backoff_coefficient: float = Field(default=2.0, ge=1.0)
    maximum_interval_seconds: float | None = Field(default=None, ge=0)

    def delay_seconds(self, failed_attempt: int) -> float:
        """Back-off before the attempt that follows `failed_attempt` (1-based)."""
        delay = self.initial_interval_seconds * self.backoff_coefficient ** (failed_attempt - 1)
        if self.maximum_interval_seconds is not None:
            delay = min(delay, self.maximum_interval_seconds)
        return delay
