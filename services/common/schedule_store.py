"""Schedules in MongoDB: `schedules` (written by the API) and `schedule_state` (written by
the timers instance that owns the schedule; the API only reads it, and deletes it with its
schedule), both addressed by `_id` = schedule_id."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from schemas.schedules import StoredSchedule
from services.common.mongo import insert_unless_present

log = logging.getLogger(__name__)

Document = dict[str, Any]
SCHEDULES = "schedules"
SCHEDULE_STATE = "schedule_state"


def schedule_from_doc(doc: Document) -> StoredSchedule:
    fields = {k: v for k, v in doc.items() if k not in ("_id", "input_json")}
    if "input_json" in doc:
        fields["input"] = json.loads(doc["input_json"])
    return StoredSchedule.model_validate(fields)


def schedule_to_doc(schedule: StoredSchedule) -> Document:
    # Datetimes stay BSON dates; the rest is the model's JSON form. The input is stored as
    # JSON text: FerretDB cannot store every JSON value (nested arrays were a 500).
    doc = schedule.model_dump(mode="json")
    doc["input_json"] = json.dumps(doc.pop("input"))
    for name in ("start_at", "end_at", "created_at", "active_since"):
        doc[name] = getattr(schedule, name)
    return {"_id": schedule.schedule_id, **doc}


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

    async def get(self, schedule_id: str) -> StoredSchedule | None:
        doc = await self._schedules.find_one({"_id": schedule_id})
        return None if doc is None else schedule_from_doc(doc)

    async def create(self, schedule: StoredSchedule) -> bool:
        """Insert a new schedule; False if its id is taken."""
        taken = await insert_unless_present(self._schedules, [schedule_to_doc(schedule)])
        return not taken

    async def replace(self, schedule: StoredSchedule) -> None:
        await self._schedules.replace_one(
            {"_id": schedule.schedule_id}, schedule_to_doc(schedule), upsert=True
        )

    async def delete(self, schedule_id: str) -> bool:
        deleted = await self._schedules.delete_one({"_id": schedule_id})
        await self._state.delete_one({"_id": schedule_id})
        return deleted.deleted_count > 0
