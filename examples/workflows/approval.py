"""Human in the loop: waits for a decision signal, answers a query with its state and
accepts an update that changes the approvers needed (its validator refuses < 1).


Input: {"request": "…", "approvers_needed": 1}. Signals: `approve` {"by": "ann"},
`reject` {"by": "bob", "reason": "…"}. Query `state`. Update `set_approvers_needed` {"needed": 2}.
"""

from __future__ import annotations

from typing import Any

from runstore.workflows import workflow


@workflow.define(name="approval", description="Waits for approvals sent as signals.")
class Approval:
    def __init__(self) -> None:
        self.approvals: list[str] = []
        self.rejection: dict[str, Any] | None = None
        self.needed = 1

    @workflow.run
    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        self.needed = int(request.get("approvers_needed", 1))
        workflow.logger.info(
            "waiting for %d approval(s) of %r", self.needed, request.get("request")
        )
        await workflow.wait_condition(
            lambda: self.rejection is not None or len(self.approvals) >= self.needed
        )
        if self.rejection is not None:
            return {"status": "rejected", **self.rejection}
        return {"status": "approved", "by": self.approvals}

    @workflow.signal
    def approve(self, decision: dict[str, Any]) -> None:
        self.approvals.append(str(decision.get("by", "someone")))

    @workflow.signal
    def reject(self, decision: dict[str, Any]) -> None:
        self.rejection = {"by": decision.get("by"), "reason": decision.get("reason")}

    @workflow.query
    def state(self) -> dict[str, Any]:
        return {"approvals": self.approvals, "needed": self.needed, "rejected": self.rejection}

    @workflow.update
    def set_approvers_needed(self, change: dict[str, Any]) -> dict[str, Any]:
        previous, self.needed = self.needed, int(change["needed"])
        return {"previous": previous, "needed": self.needed}

    @set_approvers_needed.validator  # type: ignore[attr-defined]
    def _check_needed(self, change: dict[str, Any]) -> None:
        if int(change.get("needed", 0)) < 1:
            raise ValueError("at least one approver is needed")
