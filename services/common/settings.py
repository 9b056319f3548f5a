"""Settings shared by every service; each service extends `RunstoreSettings`.

Environment variables use the prefix `RUNSTORE_` (e.g. `RUNSTORE_KAFKA_BOOTSTRAP`).
Defaults point at the local stack that `make run` starts.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.admission import MAX_COMMAND_BYTES

READ_MODELS_SUFFIX = "_readmodels"
"""Appended to `mongo_database` for the read models' database when none is named."""
MAX_DATABASE_NAME_BYTES = 63
"""MongoDB's and FerretDB's longest database name."""


class RunstoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNSTORE_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_database: str = "runstore"
    mongo_read_models_database: str = ""
    """The database of the read models (runs, executions, history) and of the projector's
    parked executions; empty: `<mongo_database>_readmodels`. Set it to `mongo_database`
    for one database (the layout before this setting). On FerretDB/SQLite a database is a
    file with one writer at a time: apart, the projector's writes do not hold the engine's
    commits back (docs/local-store.md). Moving it on a deployment with read models needs
    `runstore projections rebuild`; the services refuse to start until then
    (services/common/mongo.py, `ensure_read_models_in_place`)."""
    topic_prefix: str = ""
    """Prepended to every topic name: lets tests and tenants share one cluster."""
    partitions: int = Field(default=1, ge=1)
    """Partition count for commands, events, tasks and outcomes when they are created: the
    most engines (and projectors) that can work at once. 1 fits the one-engine stacks of
    `make run` and docker-compose; the Kubernetes manifests set 12 (docs/sizing.md)."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replicas of each topic the services create (1 for a one-broker local Kafka; 3 on a
    production cluster). Existing topics are left as they are."""
    log_level: str = "INFO"
    kafka_key_hash_memory: int = Field(default=65_536, ge=0)
    """Record keys whose partition hash a producer remembers (~100 bytes each); the
    table is emptied when full."""
    health_host: str = "127.0.0.1"
    """Interface of the /healthz, /readyz, /metrics port of services without an HTTP API."""
    tracing_endpoint: str | None = None
    """OTLP/HTTP base URL spans are exported to (e.g. http://127.0.0.1:4318); unset, the
    standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT decides; neither: no tracing."""

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)

    def group(self, name: str) -> str:
        """A consumer group name scoped like the topics: deployments sharing one cluster
        under different prefixes never join each other's groups."""
        return f"{self.topic_prefix}{name}"

    @property
    def read_models_database(self) -> str:
        """`mongo_read_models_database`, or `<mongo_database>_readmodels` when it is empty."""
        return self.mongo_read_models_database or self.mongo_database + READ_MODELS_SUFFIX

    @model_validator(mode="after")
    def _database_names_fit(self) -> RunstoreSettings:
        # Refused here, with the setting's name, rather than as InvalidNamespace at the
        # first request (the default read models' name is 11 bytes longer).
        for setting, name in (
            ("RUNSTORE_MONGO_DATABASE", self.mongo_database),
            (
                "the read models' database (RUNSTORE_MONGO_READ_MODELS_DATABASE, or "
                "RUNSTORE_MONGO_DATABASE + '_readmodels')",
                self.read_models_database,
            ),
        ):
            if len(name.encode()) > MAX_DATABASE_NAME_BYTES:
                raise ValueError(
                    f"{setting} is {name!r}: longer than {MAX_DATABASE_NAME_BYTES} bytes"
                )
        return self


class Topics:
    """Names of every topic Runstore uses."""

    __slots__ = ("commands", "dlq", "events", "outcomes", "replies", "tasks")

    def __init__(
        self, commands: str, dlq: str, events: str, tasks: str, outcomes: str, replies: str
    ) -> None:
        self.commands = commands
        self.dlq = dlq
        self.events = events
        self.tasks = tasks
        self.outcomes = outcomes
        self.replies = replies
        """Workers' answers to query and update tasks (schemas/replies.py)."""

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(
            commands=f"{prefix}workflows.commands",
            dlq=f"{prefix}workflows.commands.dlq",
            events=f"{prefix}workflows.events",
            tasks=f"{prefix}workflows.tasks",
            outcomes=f"{prefix}workflows.outcomes",
            replies=f"{prefix}workflows.replies",
        )

    def all(self) -> list[str]:
        return [self.commands, self.dlq, self.events, self.tasks, self.outcomes, self.replies]


class EngineSettings(RunstoreSettings):
    engine_group_id: str = "engine"
    engine_max_batch: int = Field(default=2_000, ge=1, le=5_000)
    """Most commands handled (and appended with one insert) per batch."""
    engine_cache_size: int = Field(default=100_000, ge=10_000)
    """Execution states kept in memory; a miss costs two `_id` reads. At least twice the
    largest batch, so a batch never evicts the states it is deciding."""
    engine_instance_id: str | None = None
    """Kafka static membership id (e.g. the pod name): a restarted engine with the same id
    gets its partitions back at once instead of after a rebalance."""
    engine_session_timeout_ms: int = Field(default=10_000, ge=6_000)
    """How long the group waits for a silent engine before moving its partitions."""
    engine_gc_full_every_s: float = Field(default=600.0, gt=0)
    """Longest time between full garbage collections (there is also one after a failed
    batch, and when the heap, not counting the state cache's growth, has grown by a
    quarter); between them, each batch's survivors are frozen instead of collected
    (services/common/runtime.py `BatchCollector`)."""
    engine_commit_every_ms: int = Field(default=100, ge=0)
    """Commit consumed offsets at most this often (0: after every batch). A crash
    redelivers what was published since the last commit; the engine re-publishes such
    commands from the store, deciding nothing twice (docs/engine-performance.md)."""
    engine_compact_commits: bool = True
    """Store lean commit documents (`_id`, `command_id`, `committed_at` and a compact
    body; docs/engine-performance.md, "Seventh session"). Engines, projectors and APIs
    of any earlier version cannot read them: during a rolling upgrade from one, run the
    new engines with False (the whole-body layout every version reads) until every
    service runs this version. Every layout is read by this version."""
    engine_health_port: int | None = 9464
    """Port of the engine's /healthz, /readyz and /metrics (unset/empty: none)."""
    engine_fetch_wait_ms: int = Field(default=500, ge=0, le=10_000)
    engine_fetch_min_bytes: int = Field(default=1, ge=1)
    """The engine's fetches of commands are answered once this many bytes have come, or
    after the wait above, whichever is first. The default (1 byte, 500 ms: aiokafka's own)
    answers a fetch at its first command, and an idle engine asks twice a second. Above 1
    byte the engine gathers (e.g. 65536 bytes / 5 ms): commands that trickle in wait up to
    the wait for fuller fetches, and the two settings below shape when it does. Gathering
    cost a closed loop of HTTP clients ~10 % of its starts per second (each wave waited in
    a fetch) and saved no CPU per start, per workflow or in a drain (docs/write-path-cost.md,
    "Eighteenth session"). A partition sought back after a failed batch may wait up to the
    wait for the fetch the broker holds."""
    engine_fetch_pace_each: bool = False
    """For a gathering engine (`engine_fetch_min_bytes` above 1). True: it stops gathering
    at its first empty fetch (batch_subscriber.pace_by_response), not only after an idle
    second. It halves the engine's fetches in a closed loop of clients, but splits waves of
    commands into smaller batches; on a quiet box the whole stack's CPU per start was ~10 %
    higher with it in three closed-loop pairs (docs/write-path-cost.md, "Tenth session"): a
    knob until a rule that keeps waves whole. `engine_fetch_gather_above_per_s`, when set,
    is applied instead."""
    engine_fetch_gather_above_per_s: float = Field(default=0.0, ge=0)
    """For a gathering engine. When set, its fetches gather only while commands come at
    least this fast (counted each second; once gathering, down to half of it);
    slower, a fetch is answered at its first command (held at most 25 ms). 0 (the
    default): gather whenever commands come. Below ~200/s a gathering fetch mostly expires
    at its wait with a few commands or none; 200 cut the broker's requests per start by
    29 % at ~100 starts/s; the start's p50 was lower in the quiet runs and not in the
    loaded ones (docs/engine-performance.md, "Tenth session"): a knob until confirmed."""
    engine_ordered_insert_probe: bool = True
    """Probe at start whether the database ends an ordered insert at its first refused
    document past 100 documents (MongoDB and the local, patched FerretDB do); if so a
    batch's commits go as one insert request. False, or a server that fails the probe (an
    upstream FerretDB v1): requests of at most 100 documents, one after the other."""
    engine_reply_networks: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ]
    )
    """IP networks the engine may connect to for direct replies (a JSON list in
    `RUNSTORE_ENGINE_REPLY_NETWORKS`; [] turns them off): a command's reply header
    cannot point the engine anywhere else."""
    engine_reply_max_connections: int = Field(default=64, ge=1)
    """Reply connections kept open at once (least recently used closed first)."""
    engine_reply_buffer_bytes: int = Field(default=1024 * 1024, ge=1024)
    """A connection's unsent bytes above which its frames are dropped (Kafka answers)."""
    engine_reply_idle_s: float = Field(default=60.0, gt=0)
    """A reply connection unused this long is closed."""


class ProjectorSettings(RunstoreSettings):
    projector_group_id: str = "projector"
    projector_max_batch: int = Field(default=1000, ge=1)
    projector_fetch_wait_ms: int = Field(default=200, ge=0, le=10_000)
    projector_fetch_min_bytes: int = Field(default=1 << 20, ge=1)
    """The projector's fetches wait for this many bytes of events, or the wait above,
    whichever comes first (1: answered as soon as anything arrives, aiokafka's default).
    A backlog of 1 MiB is answered at once, so the wait only applies while the projection
    keeps up. Bigger batches mean fewer fetches, offset commits and store writes per
    event, and more workflows whose commits all land in one batch (inserted, not inserted
    then replaced): against 1 / 500 ms, the projector's MongoDB commands per one-activity
    workflow fell 2.02 -> 0.38 and the projector's + FerretDB's CPU per HTTP start by
    0.6-0.9 ms, with HTTP start and read latencies no worse (docs/read-models.md,
    "Projector batches"). Lists on MongoDB see a new run up to the wait later; point
    reads fold the commits a projection lacks."""
    projector_hold_ms: int = Field(default=500, ge=0, le=600_000)
    """How long the projector may hold back the events of an execution that started in a
    batch and is still open at its end (0: never), so that its next commits are written
    with them: a workflow that completes within this time costs the store inserts only,
    not inserts then replaces (services/projector/holding.py). Nothing is held when a
    batch is full; offsets are committed only up to the first held event. In
    bench/workers.py at 80 workflows/s, FerretDB's CPU per workflow: 200 ms against 0,
    -26 to -34 %; 500 against 200, -28 to -35 % more (docs/read-models.md, "Projector
    batches"). A new run reaches the read models up to this much later."""
    projector_hold_max_events: int = Field(default=10_000, ge=0)
    """Most events held back at once (beyond them, executions are projected at once)."""
    projector_commit_every_ms: int = Field(default=1000, ge=0)
    """Commit the offsets of projected batches at most this often (0: after every batch),
    and when partitions move and on shutdown. A crash projects the events since the last
    commit again, which changes nothing (the position guards)."""
    projector_memory_mb: int = Field(default=64, ge=0)
    """Documents the projector keeps of the executions it wrote last (0: none), so their
    next events need no reads; dropped whenever partitions move."""
    projector_parked_check_seconds: float = Field(default=10.0, gt=0)
    """How often the projector looks for parked executions due for a retry (and for
    `runstore projections retry` requests)."""
    projector_history_heads: bool = True
    """Keep chunk 0 of a new run's history in its run row (`history_head`, a start then
    writes no history document; docs/read-models.md, "The head: chunk 0 in the run row"),
    in the projector and in `runstore projections rebuild`. APIs and projectors of any
    earlier version read chunk 0 only as a document: they fail to read such a run, and an
    earlier projector writes its later events to a chunk 0 document this version does not
    read (the head wins). During a rolling upgrade from one, run the new projectors with
    False (chunk 0 as a document, the layout every version reads and writes) until every
    API and projector runs this version, then True. False keeps folding the heads rows
    already have; only new runs get documents. A rollback to an earlier version: False
    first, then `runstore projections rebuild` (the heads written meanwhile stay in their
    rows until rebuilt). Every layout is read by this version."""
    projector_health_port: int | None = 9465
    """Port of the projector's /healthz, /readyz and /metrics (unset/empty: none)."""


class WorkerSettings(RunstoreSettings):
    """`runstore worker` (the worker SDK's process): RUNSTORE_WORKER_*."""

    worker_deployment: str = "default"
    """The deployment this worker serves: its tasks' route and its consumer group."""
    worker_id: str | None = None
    """Names the worker in the commands it sends; default host:pid."""
    worker_version: str = ""
    """The code version the worker reports to the catalogue."""
    worker_heartbeat_seconds: float = Field(default=10.0, gt=0)
    """How often a worker re-registers; it counts as gone after 3 missed heartbeats."""
    worker_cache_size: int = Field(default=2000, ge=1)
    """Live workflow instances kept in memory (least recently used out); a task for one
    of them needs no replay."""
    worker_concurrency: int = Field(default=200, ge=1)
    """Executions advanced at once within a batch of tasks."""
    worker_max_batch: int = Field(default=500, ge=1)
    worker_linger_ms: int = Field(default=2, ge=0)
    worker_commit_every_ms: int = Field(default=100, ge=0)
    """Commit the offsets of handled task batches at most this often (0: after every
    batch), and at once when no task is waiting, before a rebalance and on shutdown. A
    crash redelivers the tasks handled since the last commit; replay makes a second pass
    safe (a task's command is applied once), as for a crash mid-batch."""
    worker_activity_eager_seconds: float = Field(default=1.0, ge=0)
    """How long a workflow task waits for its activities' outcomes (recorded in the task's
    own report); an activity still running then goes on detached and reports itself."""
    worker_activity_concurrency: int = Field(default=200, ge=1)
    """Activity attempts a worker runs at once (more wait for a slot)."""
    worker_activity_deadline_seconds: float = Field(default=300.0, gt=0)
    """Longest a detached attempt goes unobserved: its deadline timer is at most this long
    (and renewed while the attempt runs), so a dead worker's attempt is retried after it."""
    worker_shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """A stopping worker (SIGTERM) lets its detached attempts run this long; those still
    running then are reported failed (`WorkerStoppedError`) and retried by their policy."""
    worker_instance_id: str | None = None
    """Kafka static membership id (e.g. the pod name): a restarted worker gets its
    partitions back at once instead of after the session timeout."""
    worker_session_timeout_ms: int = Field(default=10_000, ge=1000)
    worker_health_port: int | None = 9467
    """Port of the worker's /healthz, /readyz and /metrics (None: not served)."""
    worker_own_command_wait_seconds: float = Field(default=3.0, ge=0)
    """How long a worker waits for its last command of an execution to show in the history
    before it rebuilds the instance from what is there (the engine refused it)."""


class AccessMode(StrEnum):
    SHARED = "shared"
    """Every authenticated caller may read and command every run (one workspace, as
    the Mistral API behaves: `list_runs(user_id=...)` filters, it does not restrict)."""
    SEPARATE = "separate"
    """A caller sees and commands only the runs it started; others' runs answer 404."""


class ListIndexMode(StrEnum):
    """Where `list_runs` is answered (docs/read-models.md, "The run list index")."""

    AUTO = "auto"
    """`memory` on FerretDB (which scans and sorts every list query), `store` on MongoDB
    (whose indexes serve every list query)."""
    MEMORY = "memory"
    """An in-memory index of the runs in the API process, loaded from the store and kept
    by the events topic; lists go to the store until it is loaded."""
    STORE = "store"
    """Every list is a query of the store."""


class ApiSettings(RunstoreSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_keys: str | None = None
    """Comma-separated `key=user_id` pairs; unset = dev mode (any key is the dev user)."""
    api_command_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long the gateway waits for the engine's outcome before answering 504."""
    api_max_body_bytes: int = Field(default=900 * 1024, ge=1024, le=MAX_COMMAND_BYTES)
    """Largest request body; below the largest command (schemas/admission.py), which is
    below what the command topic accepts once the body is enveloped as a command."""
    api_instance_id: str | None = None
    """Names this API instance's outcome consumer group; generated when unset."""
    api_publish_linger_ms: int = Field(default=10, ge=0, le=1000)
    """How long the gateway holds a command for others to share its produce request."""
    api_publish_quiet_ms: int = Field(default=2, ge=0, le=1000)
    """The held commands go sooner, once no other came for this long, or for 4 usual gaps
    between commands when that is longer (at or above the linger: never sooner): a burst
    of concurrent requests is not held for the whole linger (services/api/command_window.py)."""
    api_publish_when_all_wait: bool = True
    """The held commands go at once when no other request can come: every HTTP connection
    of this instance has a request waiting for its answer (services/api/connection_census.py)."""
    api_access_mode: AccessMode = AccessMode.SHARED
    """Whether users see each other's runs (docs/api-gateway.md, "Access")."""
    api_sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    """Silence after which a stream sends a `: keep-alive` comment (resets client timeouts)."""
    api_sse_queue_size: int = Field(default=2000, ge=10)
    """Events buffered per stream subscriber before it re-syncs from the store/broker."""
    api_worker_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long a query or update waits for a worker's reply (and an update for the engine
    to accept what the worker recorded) before answering 504."""
    api_wait_default_seconds: float = Field(default=60.0, gt=0)
    """How long `execute` with `wait_for_result` waits when the body names no timeout."""
    api_wait_max_seconds: float = Field(default=3600.0, gt=0)
    api_batch_max_ids: int = Field(default=1000, ge=1)
    api_index_wait_ms: int = Field(default=100, ge=0)
    """Longest a point read of an execution or run this instance has just answered a
    command of waits for the run list index to fold its events, before reading the store
    (services/api/answered.py; 0: never waits)."""
    api_outcome_memory: int = Field(default=10_000, ge=0)
    """Accepted outcomes remembered by command id, so a client's retry of the same
    idempotency key is answered without another trip through the engine (~1 KB each)."""
    api_sse_dedup_memory: int = Field(default=100_000, ge=100)
    """Executions whose last delivered position each broker-wide stream remembers to drop
    re-published events (~150 bytes each, per stream)."""
    api_max_connections: int = Field(default=4096, ge=16)
    """Open connections and requests (streams included) an API process serves at once;
    more are answered 503 (uvicorn `limit_concurrency`). Bounds the memory of streams."""
    api_failure_clients: int = Field(default=50_000, ge=100)
    """Client addresses whose failed-request bucket is remembered (least recent out)."""
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A request's headers must be complete this long after its connection opened (or its
    first byte came); else 408 and the connection is closed (services/api/http_deadlines.py)."""
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)
    """A request's body must be complete this long after its headers; else 408 and close."""
    api_shutdown_seconds: int = Field(default=5, ge=1)
    """On SIGTERM: how long requests in flight (a `wait_for_result`, a stream) may still
    run before they are cancelled and the API exits."""
    api_bad_requests_per_second: float = Field(default=50.0, gt=0)
    """Refill rate of each client's bucket of failed (4xx) requests; empty bucket → 429."""
    api_bad_requests_burst: int = Field(default=500, ge=1)
    api_list_concurrency: int = Field(default=2, ge=1)
    """Run-list queries an API process runs at once; more wait for a turn
    (services/api/list_budget.py: on the local FerretDB each is a scan of every run)."""
    api_list_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time budget of one list request (its wait for a turn included), also sent to the
    store as maxTimeMS; past it the request answers 503 with Retry-After."""
    api_allow_unregistered: bool = False
    """Let HTTP execute start workflows no worker registered (docs/catalogue.md); an
    archived workflow is refused either way. Kafka starts are never checked."""
    api_list_index: ListIndexMode = ListIndexMode.AUTO
    """`RUNSTORE_API_LIST_INDEX`: auto, memory or store (see ListIndexMode)."""
    api_list_index_max_runs: int = Field(default=500_000, ge=0)
    """Most runs the index holds (~1.5 KB each, docs/read-models.md): past it the index is
    dropped and lists query the store, until the API restarts."""
    api_list_index_group: str = "projector"
    """The projector's consumer group (unprefixed, as `projector_group_id`): the index
    follows the events topic from the offsets it committed."""
    api_direct_replies: bool = True
    """`RUNSTORE_API_DIRECT_REPLIES`: listen for the engine's outcome frames and ask for
    them on every command a request waits for (docs/api-gateway.md, "The direct reply
    channel"); off, outcomes come only through workflows.outcomes."""
    api_reply_host: str = "127.0.0.1"
    """Interface the reply listener binds (an IP literal; 0.0.0.0 for every interface)."""
    api_reply_port: int = Field(default=0, ge=0, le=65535)
    """Port of the reply listener; 0: any free port (its number goes in the header)."""
    api_reply_advertise: str | None = None
    """The IP the engine connects to (e.g. the pod IP); `auto`: the address this host's
    name resolves to (a container's on its network); unset: `api_reply_host`, or
    127.0.0.1 when that is a wildcard."""
    api_reply_max_frame_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    """Largest frame a reply connection may send; a larger one closes it. At least 1 MiB: a
    frame may carry up to 256 KiB of STARTED events besides its outcomes
    (services/engine/replies.py), and a limit below what engines send would close the
    connection at every such frame."""
    page_token_secret: SecretStr | None = None
    """Key of the list_runs page-token MAC (`RUNSTORE_PAGE_TOKEN_SECRET`); the same on every
    API instance. Unset: a random key per process, so tokens do not survive a restart."""


class TimersSettings(RunstoreSettings):
    timers_group_id: str = "timers"
    timers_max_batch: int = Field(default=1000, ge=1)
    """Most events read per batch (one store write per batch)."""
    timers_tick_seconds: float = Field(default=0.05, gt=0, le=1)
    """Longest sleep of the firing loop: the floor of a timer's lateness when idle."""
    timers_fire_batch: int = Field(default=5000, ge=1)
    """Most timers fired per publish."""
    timers_stats_seconds: float = Field(default=10.0, gt=0)
    """Period of the summary log line (and of the stats document `runstore timers status` reads)."""
    timers_instance_id: str | None = None
    """Kafka static membership id (e.g. the pod name): a restarted instance gets its
    partitions back at once instead of after the session timeout."""
    timers_session_timeout_ms: int = Field(default=10_000, ge=6_000)
    timers_health_port: int | None = 9466
    """Port of the timers' /healthz, /readyz and /metrics (unset/empty: none)."""
    timers_schedule_refresh_seconds: float = Field(default=1.0, gt=0)
    """How often the schedules are re-read: a change made over HTTP takes effect within it."""
    # --- api12: what the timers' events consumer costs (docs/write-path-cost.md) ---
    timers_fetch_wait_ms: int = Field(default=100, ge=0, le=10_000)
    """Longest the broker holds a fetch of events for `timers_fetch_min_bytes` to arrive:
    a timer is armed up to this much after its event (one due sooner fires that late).
    One fetch (and one offset commit) per wait instead of one per engine batch."""
    timers_fetch_min_bytes: int = Field(default=1024 * 1024, ge=1)
    """Bytes of events a fetch waits for (up to `timers_fetch_wait_ms`); 1: answer as soon
    as any event arrives (one fetch per engine batch)."""
    timers_commit_every_ms: int = Field(default=1000, ge=0)
    """Commit the offsets of applied event batches at most this often (0: after every
    batch), and when partitions move and on shutdown. A crash re-applies the events since
    the last commit, which changes nothing (a timer stored or deleted twice is the same)."""
