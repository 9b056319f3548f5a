"""The DBOS application of the DBOS peer: one workflow of one step, dequeued from the
`bench` queue. Run as its own process by dbos_peer.py:

    python bench/peers/dbos_app.py <system database URL> [--migrate-only]

`--migrate-only` creates DBOS's system tables and exits (the start-only rows enqueue with
a DBOSClient, which never migrates); without it the process runs the workflows the
benchmark enqueues until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading

from dbos import DBOS, DBOSConfig

APP = "runstore-bench"
QUEUE = "bench"
WORKFLOW = "bench_workflow"


def main() -> int:
    url = sys.argv[1]
    config: DBOSConfig = {"name": APP, "system_database_url": url, "log_level": "WARNING"}
    DBOS(config=config)

    @DBOS.step()
    def one_step(n: int) -> int:
        return n + 1

    @DBOS.workflow(name=WORKFLOW)
    def bench_workflow(payload: dict[str, int]) -> int:
        return one_step(payload["n"])

    DBOS.launch()
    # Registered in the system database, where the start-only rows' client finds it too.
    DBOS.register_queue(QUEUE)
    if "--migrate-only" in sys.argv:
        DBOS.destroy()
        return 0
    print("dbos app ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    DBOS.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
