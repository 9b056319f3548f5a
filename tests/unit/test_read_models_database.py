"""`read_models_database`: the read models' database is the setting's, or the commits'
database's name with `_readmodels` after it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pymongo import AsyncMongoClient

from services.common.mongo import mongo_database, read_models_database
from services.common.settings import RunstoreSettings


def test_by_default_the_read_models_have_a_database_of_their_own() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(connect=False)
    settings = RunstoreSettings(mongo_database="rs", mongo_read_models_database="")
    assert read_models_database(client, settings).name == "rs_readmodels"
    assert mongo_database(client, settings).name == "rs"


def test_the_setting_names_the_read_models_database() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(connect=False)
    settings = RunstoreSettings(mongo_database="rs", mongo_read_models_database="rs_models")
    assert read_models_database(client, settings).name == "rs_models"
    assert mongo_database(client, settings).name == "rs"


def test_set_to_the_commits_database_they_share_it() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(connect=False)
    settings = RunstoreSettings(mongo_database="rs", mongo_read_models_database="rs")
    assert read_models_database(client, settings).name == "rs"


def test_a_name_past_the_servers_limit_is_refused_with_the_setting() -> None:
    fits = "d" * (63 - len("_readmodels"))
    assert RunstoreSettings(mongo_database=fits).read_models_database == fits + "_readmodels"
    with pytest.raises(ValidationError, match="RUNSTORE_MONGO_READ_MODELS_DATABASE"):
        RunstoreSettings(mongo_database=fits + "d", mongo_read_models_database="")
    # A name given for the read models need not leave room for the suffix.
    named = RunstoreSettings(mongo_database=fits + "dd", mongo_read_models_database="rm")
    assert named.read_models_database == "rm"
    with pytest.raises(ValidationError, match="RUNSTORE_MONGO_DATABASE is"):
        RunstoreSettings(mongo_database="d" * 64, mongo_read_models_database="rm")
