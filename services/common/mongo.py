"""MongoDB client factory: the only place a client is built."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.common.settings import RunstoreSettings

Document = dict[str, Any]


def mongo_client(settings: RunstoreSettings) -> AsyncMongoClient[Document]:
    # tz_aware: datetimes come back as aware UTC, as they went in.
    return AsyncMongoClient(settings.mongo_url, tz_aware=True, maxPoolSize=64)


def mongo_database(
    client: AsyncMongoClient[Document], settings: RunstoreSettings
) -> AsyncDatabase[Document]:
    return client[settings.mongo_database]
