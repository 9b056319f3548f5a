"""Prometheus metrics every Runstore service exposes on `/metrics` (prometheus-client).

All metrics live in the process's default registry and are declared here, in one place,
so their names and labels stay consistent across services. Services record with the
small helpers below (one call per batch, not per record: the engine handles thousands
of commands a second, and a labelled `inc` costs about a microsecond).

The timers service reads `TIMERS_PENDING` from its pending set at scrape time and
observes `TIMER_LATENESS` per fired deadline (services/timers/stats.py).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.common.kafka_io import Position

# Batches go up to 5,000 records (engine) and 1,000 (projector).
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONSUMER_LAG = Gauge(
    "runstore_consumer_lag",
    "Records in a partition not yet consumed by the group (high watermark - next offset), "
    "as of the group's last batch from that partition.",
    ["group", "topic", "partition"],
)
COMMANDS_APPLIED = Counter(
    "runstore_commands_applied_total",
    "Commands the engine decided, by command type and outcome code ('accepted' or the "
    "rejection code).",
    ["type", "outcome"],
)
BATCH_SIZE = Histogram(
    "runstore_batch_size",
    "Records per consumed batch.",
    ["service"],
    buckets=_BATCH_BUCKETS,
)
STORE_LATENCY = Histogram(
    "runstore_store_latency_seconds",
    "Time to write one batch's documents to MongoDB (engine: commits; projector: read models).",
    ["service"],
    buckets=_LATENCY_BUCKETS,
)
ENGINE_BATCH_STAGE = Histogram(
    "runstore_engine_batch_stage_seconds",
    "Where a consumed batch's time goes in the engine, by stage: fetch (its newest record's "
    "timestamp to the handler), decide, wait (for the batch before to be stored), store, "
    "complete (answers built), publish (records acknowledged, offsets queued).",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
DEAD_LETTERS = Counter(
    "runstore_dead_letters_total",
    "Records sent to the dead-letter topic, by reason.",
    ["reason"],
)
PROJECTOR_LAG = Gauge(
    "runstore_projector_lag_events",
    "Events on workflows.events not yet projected (sum over the partitions this "
    "projector owns, as of its last batch).",
)
PROJECTOR_LAST_SEQ = Gauge(
    "runstore_projector_last_seq",
    "Highest per-execution seq in the projector's last batch.",
)
HTTP_LATENCY = Histogram(
    "runstore_http_request_duration_seconds",
    "HTTP request latency by route template, method and status.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
SSE_SUBSCRIBERS = Gauge(
    "runstore_sse_subscribers",
    "Server-sent-event streams open on this API instance.",
)
LIST_INDEX_RUNS = Gauge(
    "runstore_api_list_index_runs",
    "Runs in this API instance's in-memory run list index; -1 while it is not ready (lists "
    "then query the store) or off (RUNSTORE_API_LIST_INDEX).",
)
POINT_READS = Counter(
    "runstore_api_point_reads_total",
    "Point reads of a run or an execution (get_run, get_workflow_execution, owner checks) by "
    "where they started: `index` (the run list index's row, then at most one round trip to "
    "the commits) or `store` (the read models, docs/read-models.md).",
    ["path"],
)
TIMERS_PENDING = Gauge(
    "runstore_timers_pending",
    "Deadlines stored and not yet fired (set by the timers service).",
)
TIMER_LATENESS = Histogram(
    "runstore_timer_lateness_seconds",
    "How long after its due time a deadline fired (observed by the timers service).",
    buckets=_LATENCY_BUCKETS,
)
WORKFLOW_TASKS = Counter(
    "runstore_worker_workflow_tasks_total",
    "Workflow tasks a worker handled, by outcome: 'advanced' (steps reported or nothing to "
    "do), 'failed' (WORKFLOW_TASK_FAILED reported) or 'error' (left for redelivery).",
    ["deployment", "outcome"],
)
WORKFLOW_TASK_LATENCY = Histogram(
    "runstore_worker_workflow_task_seconds",
    "Time a worker took to advance one execution for a task (replay, code and activities "
    "run inline included).",
    ["deployment"],
    buckets=_LATENCY_BUCKETS,
)
ACTIVITIES = Counter(
    "runstore_worker_activities_total",
    "Activity attempts a worker ran, by outcome: 'completed', 'failed' or 'timed_out'.",
    ["deployment", "outcome"],
)

ENGINE_REPLIES = Counter(
    "runstore_engine_replies_total",
    "Outcomes the engine wrote to a waiting API instance over the direct reply channel, by "
    "result: 'sent' (written to its connection), 'dropped' (connection down or refused, "
    "its buffer full or its queue while connecting: the outcome record on Kafka answers "
    "instead) or 'refused' (the "
    "header's address is not in RUNSTORE_ENGINE_REPLY_NETWORKS).",
    ["result"],
)
API_OUTCOMES_RESOLVED = Counter(
    "runstore_api_outcomes_resolved_total",
    "Waiting commands this API instance answered, by where their outcome came from first: "
    "'direct' (the engine's reply channel) or 'topic' (workflows.outcomes).",
    ["path"],
)
API_COMMAND_WINDOWS = Counter(
    "runstore_api_command_windows_total",
    "Command windows this API instance handed to Kafka, by what ended them: 'all_waiting' "
    "(every HTTP connection's request waited for an answer: no other could come), 'quiet' "
    "(no record came for the quiet time), 'linger' (the longest a record waits) or 'stop'.",
    ["ended"],
)
API_REPLY_CONNECTIONS = Counter(
    "runstore_api_reply_connections_total",
    "Connections to this API instance's reply listener, by result: 'accepted' (right "
    "token) or 'refused' (wrong token or not the protocol: closed, nothing resolved).",
    ["result"],
)


class _Consumer(Protocol):
    def highwater(self, partition: Any) -> int | None: ...


def observe_consumed(group: str, consumer: object, records: Sequence[Position]) -> int:
    """Record a consumed batch's size and its partitions' lag; returns the summed lag."""
    BATCH_SIZE.labels(group).observe(len(records))
    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return 0
    from aiokafka import TopicPartition

    total = 0
    for (topic, partition), offset in last.items():
        end = highwater(TopicPartition(topic, partition))
        if end is None:
            continue
        lag = max(end - offset - 1, 0)
        total += lag
        CONSUMER_LAG.labels(group, topic, str(partition)).set(lag)
    return total


def count_outcomes(outcomes: Iterable[tuple[str, str]]) -> None:
    """Count decided commands by (command type, outcome code)."""
    for (kind, outcome), n in Tally(outcomes).items():
        COMMANDS_APPLIED.labels(kind, outcome).inc(n)


def count_dead_letters(reasons: Iterable[str]) -> None:
    for reason, n in Tally(reasons).items():
        DEAD_LETTERS.labels(reason).inc(n)


def exposition() -> tuple[bytes, str]:
    """The text format of every metric of this process, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
