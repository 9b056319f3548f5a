"""Settings shared by every service; each service extends `RunstoreSettings`.

Environment variables use the prefix `RUNSTORE_` (e.g. `RUNSTORE_KAFKA_BOOTSTRAP`).
Defaults point at the local stack that `make run` starts.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RunstoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNSTORE_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_database: str = "runstore"
    topic_prefix: str = ""
    """Prepended to every topic name: lets tests and tenants share one cluster."""
    partitions: int = Field(default=12, ge=1)
    """Partition count for commands, events, tasks and outcomes when they are created."""
    log_level: str = "INFO"

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)

    def group(self, name: str) -> str:
        """A consumer group name scoped like the topics: deployments sharing one cluster
        under different prefixes never join each other's groups."""
        return f"{self.topic_prefix}{name}"


class Topics:
    """Names of every topic Runstore uses."""

    __slots__ = ("commands", "dlq", "events", "outcomes", "tasks")

    def __init__(self, commands: str, dlq: str, events: str, tasks: str, outcomes: str) -> None:
        self.commands = commands
        self.dlq = dlq
        self.events = events
        self.tasks = tasks
        self.outcomes = outcomes

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(
            commands=f"{prefix}workflows.commands",
            dlq=f"{prefix}workflows.commands.dlq",
            events=f"{prefix}workflows.events",
            tasks=f"{prefix}workflows.tasks",
            outcomes=f"{prefix}workflows.outcomes",
        )

    def all(self) -> list[str]:
        return [self.commands, self.dlq, self.events, self.tasks, self.outcomes]


class EngineSettings(RunstoreSettings):
    engine_group_id: str = "engine"
    engine_max_batch: int = Field(default=500, ge=1, le=5_000)
    """Most commands handled (and appended with one insert) per batch."""
    engine_cache_size: int = Field(default=100_000, ge=10_000)
    """Execution states kept in memory; a miss costs two `_id` reads. At least twice the
    largest batch, so a batch never evicts the states it is deciding."""
    engine_instance_id: str | None = None
    """Kafka static membership id (e.g. the pod name): a restarted engine with the same id
    gets its partitions back at once instead of after a rebalance."""
    engine_session_timeout_ms: int = Field(default=10_000, ge=6_000)
    """How long the group waits for a silent engine before moving its partitions."""


class ProjectorSettings(RunstoreSettings):
    projector_group_id: str = "projector"
    projector_max_batch: int = Field(default=1000, ge=1)


class ApiSettings(RunstoreSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_keys: str | None = None
    """Comma-separated `key=user_id` pairs; unset = dev mode (any key is the dev user)."""
    api_command_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long the gateway waits for the engine's outcome before answering 504."""
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    api_instance_id: str | None = None
    """Names this API instance's outcome consumer group; generated when unset."""
