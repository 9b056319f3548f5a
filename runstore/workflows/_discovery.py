"""Finding the workflows and activities a worker serves in the modules it is given."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from runstore.workflows._api import ActivityFunction


def discover(module_names: Iterable[str]) -> tuple[list[type], list[Any]]:
    """Classes decorated with `@workflow.define` and `@activity` functions found at the
    top level of each module (and of the modules a package's `__init__` imports)."""
    workflows: dict[str, type] = {}
    activities: dict[str, ActivityFunction] = {}
    for name in module_names:
        module = importlib.import_module(name)
        for value in vars(module).values():
            definition = getattr(value, "__runstore_workflow__", None)
            if isinstance(value, type) and definition is not None:
                workflows[definition.name] = value
            elif isinstance(value, ActivityFunction):
                activities[value.definition.name] = value
            elif getattr(value, "__name__", "").startswith(f"{name}."):
                sub_workflows, sub_activities = discover([value.__name__])
                for cls in sub_workflows:
                    workflows[cls.__runstore_workflow__.name] = cls  # type: ignore[attr-defined]
                for fn in sub_activities:
                    activities[fn.definition.name] = fn
    return list(workflows.values()), list(activities.values())
