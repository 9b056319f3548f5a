"""Schedules in MongoDB: `schedules` (written by the API) and `schedule_state` (written by
the timers instance that owns the schedule), both addressed by `_id` = schedule_id."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from schemas.schedules import StoredSchedule

log = logging.getLogger(__name__)

Document = dict[str, Any]
SCHEDULES = "schedules"
SCHEDULE_STATE = "schedule_state"


def schedule_from_doc(doc: Document) -> StoredSchedule:
    return StoredSchedule.model_validate({k: v for k, v in doc.items() if k != "_id"})


class MongoScheduleStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._schedules = db[SCHEDULES]
        self._state = db[SCHEDULE_STATE]

    async def all_schedules(self) -> list[StoredSchedule]:
        """Every schedule (a scan: schedules are few, read once per refresh period)."""
        found = []
        async for doc in self._schedules.find({}):
            try:
                found.append(schedule_from_doc(doc))
            except ValidationError as exc:
                log.error("schedule %r is unreadable; skipped: %s", doc.get("_id"), exc)
        return found

    async def state(self, schedule_id: str) -> Document | None:
        return await self._state.find_one({"_id": schedule_id})

    async def save_state(self, schedule_id: str, state: Document) -> None:
        await self._state.replace_one({"_id": schedule_id}, state, upsert=True)
