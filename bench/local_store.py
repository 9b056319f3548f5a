"""The local store: FerretDB 1.24 on PostgreSQL against FerretDB 1.24 on SQLite (today's
default for `make run` and the tests). Evidence for docs/local-store.md.

    .venv/bin/python bench/local_store.py [--docs 55000] [--list-runs 10000] [--json out.json]

Starts a throw-away PostgreSQL (bench/peers/postgres.py, shipped defaults) and two
FerretDB servers built from deploy/local/ferretdb (one per handler), then on each:

1. raw inserts: `insert_many` of --docs run-shaped documents (batches of 1,000), docs/s;
2. pushdown: FerretDB's own `explain` of a find with each kind of filter, sort and limit
   (`filterPushdown`, `sortPushdown`, `limitPushdown`: whether the backend's SQL does the
   work or FerretDB filters/sorts every document in Go);
3. on PostgreSQL only, an equality filter on a field of the --docs collection three ways:
   no index, the btree index FerretDB's own `createIndexes` builds, and an expression GIN
   index on `_jsonb->'field'` made in SQL: PostgreSQL's plan node and execution time
   (EXPLAIN ANALYZE of the filter in FerretDB's plan), and the whole find through FerretDB;
4. with --list-runs N (0 to skip), bench/list_runs.py at N runs against each server: the
   API's list and point reads end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "deploy" / "local"))

import infra  # noqa: E402
import psycopg  # noqa: E402
from postgres import postgres_server  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

Doc = dict[str, Any]
STATUSES = ["RUNNING", "COMPLETED", "FAILED", "CANCELED", "TERMINATED"]
FIELD = "workflow"  # the field of the index test
VALUE = "workflow-07"  # 1 document in 20


def run_doc(rnd: random.Random, i: int) -> Doc:
    """About the size and shape of a run document of the read models."""
    return {
        "_id": uuid.uuid4().hex,
        "execution_id": f"exec-{i:07d}",
        "workflow": f"workflow-{rnd.randrange(20):02d}",
        "status": rnd.choice(STATUSES),
        "user_id": f"user-{rnd.randrange(50):02d}",
        "start_ns": 1_700_000_000_000_000_000 + rnd.randrange(10**15),
        "deployment": rnd.choice(["prod", "staging", "dev"]),
        "tags": ["billing", "nightly"][: rnd.randrange(3)],
        "search": {"customer": f"Customer {rnd.randrange(1000)}"},
        "input": {"i": i, "note": "x" * 80},
    }


@contextmanager
def stores(work: Path) -> Iterator[dict[str, tuple[str, str | None]]]:
    """Both FerretDB servers: name -> (MongoDB URL, PostgreSQL URL of its database)."""
    with ExitStack() as stack:
        pg_url, _ = stack.enter_context(postgres_server(work, database="ferretdb"))
        sqlite = stack.enter_context(infra.start_ferretdb(infra.free_port(), work / "sqlite"))
        pg = stack.enter_context(
            infra.start_ferretdb(
                infra.free_port(), work / "pg", postgresql_url=pg_url + "?sslmode=disable"
            )
        )
        yield {
            "FerretDB (SQLite)": (sqlite.address, None),
            "FerretDB (PostgreSQL)": (pg.address, pg_url),
        }


async def inserts(db: Any, docs: list[Doc]) -> float:
    coll = db["inserts"]
    began = time.perf_counter()
    for k in range(0, len(docs), 1000):
        await coll.insert_many(docs[k : k + 1000], ordered=False)
    return len(docs) / (time.perf_counter() - began)


PUSHDOWN_CASES: dict[str, Doc] = {
    "{status: 'FAILED'} (top-level equality)": {"filter": {"status": "FAILED"}},
    "{status: {$eq: 'FAILED'}}": {"filter": {"status": {"$eq": "FAILED"}}},
    "{status: {$ne: 'FAILED'}}": {"filter": {"status": {"$ne": "FAILED"}}},
    "{start_ns: {$gt: n}} (range)": {"filter": {"start_ns": {"$gt": 1_700_000_000}}},
    "{status: {$in: [...]}}": {"filter": {"status": {"$in": ["FAILED", "RUNNING"]}}},
    "{$or: [...]}": {"filter": {"$or": [{"status": "FAILED"}, {"user_id": "user-01"}]}},
    "{'search.customer': ...} (dotted)": {"filter": {"search.customer": "Customer 7"}},
    "{} sort {start_ns: -1}": {"filter": {}, "sort": {"start_ns": -1}},
    "{} limit 50": {"filter": {}, "limit": 50},
    "{status: 'FAILED'} limit 50": {"filter": {"status": "FAILED"}, "limit": 50},
}


async def pushdown(db: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, spec in PUSHDOWN_CASES.items():
        explained = await db.command("explain", {"find": "inserts", **spec})
        out[label] = {
            key: explained.get(key) for key in ("filterPushdown", "sortPushdown", "limitPushdown")
        }
    return out


def _plan_node(plan: Any) -> tuple[str, str | None]:
    """The first scan node of a PostgreSQL JSON plan and its filter/condition text."""
    todo = [plan]
    while todo:
        node = todo.pop(0)
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if "Plan" in node:
            todo.append(node["Plan"])
            continue
        kind = node.get("Node Type", "")
        if "Scan" in kind:
            if kind == "Bitmap Heap Scan":
                inner = node.get("Plans", [{}])[0].get("Node Type", "")
                return f"{kind} <- {inner}", node.get("Recheck Cond")
            return kind, node.get("Filter") or node.get("Index Cond")
        todo.extend(node.get("Plans", []))
    return "?", None


async def index_test(mongo_db: Any, pg_url: str, database: str) -> dict[str, dict[str, Any]]:
    """An equality filter three ways on the PostgreSQL backend (see the module doc)."""
    coll = mongo_db["inserts"]
    with psycopg.connect(pg_url, autocommit=True) as pg:
        table = pg.execute(
            f"SELECT _jsonb->>'table' FROM \"{database}\"._ferretdb_database_metadata "
            "WHERE _jsonb->>'_id' = 'inserts'"
        ).fetchone()
        assert table is not None, "FerretDB's metadata names no table for the collection"
        qualified = f'"{database}"."{table[0]}"'
        pg.execute(f"ANALYZE {qualified}")
        out: dict[str, dict[str, Any]] = {}

        async def one(label: str) -> None:
            explained = await mongo_db.command(
                "explain", {"find": "inserts", "filter": {FIELD: VALUE}}
            )
            node, condition = _plan_node(explained.get("queryPlanner"))
            pg_ms = None
            if condition:
                analyzed = pg.execute(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT _jsonb FROM {qualified} "
                    f"WHERE {condition}"
                ).fetchone()
                assert analyzed is not None
                runs = [analyzed[0][0]["Execution Time"]]
                for _ in range(4):
                    again = pg.execute(
                        f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT _jsonb FROM {qualified} "
                        f"WHERE {condition}"
                    ).fetchone()
                    assert again is not None
                    runs.append(again[0][0]["Execution Time"])
                pg_ms = statistics.median(runs)
            finds = []
            for _ in range(5):
                began = time.perf_counter()
                found = await coll.find({FIELD: VALUE}).to_list()
                finds.append((time.perf_counter() - began) * 1000)
            out[label] = {
                "plan": node,
                "condition": condition,
                "postgres_execution_ms": pg_ms,
                "find_ms": statistics.median(finds),
                "matched": len(found),
            }

        await one("no index")
        await coll.create_index(FIELD)
        pg.execute(f"ANALYZE {qualified}")
        await one("createIndexes (FerretDB's btree)")
        pg.execute(f"CREATE INDEX bench_gin ON {qualified} USING gin ((_jsonb->'{FIELD}'))")
        pg.execute(f"ANALYZE {qualified}")
        await one("expression GIN on _jsonb->'field'")
    return out


async def measure_store(name: str, url: str, pg_url: str | None, docs: list[Doc]) -> dict[str, Any]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(url)
    database = f"local_store_{uuid.uuid4().hex[:6]}"
    db = client[database]
    try:
        print(f"{name}: inserting {len(docs):,} documents...", file=sys.stderr, flush=True)
        rate = await inserts(db, docs)
        result: dict[str, Any] = {"inserts_per_s": rate, "pushdown": await pushdown(db)}
        if pg_url is not None:
            print(f"{name}: index test...", file=sys.stderr, flush=True)
            result["index_test"] = await index_test(db, pg_url, database)
        return result
    finally:
        await client.drop_database(database)
        await client.close()


def report(results: dict[str, dict[str, Any]], docs: int) -> str:
    names = list(results)
    lines = [f"raw inserts (insert_many, batches of 1,000, {docs:,} run-shaped documents):"]
    for name in names:
        lines.append(f"  {name:<24} {results[name]['inserts_per_s']:>9,.0f} docs/s")
    lines.append("pushdown (FerretDB's explain: filter / sort / limit done by the backend's SQL):")
    head = f"  {'query':<42}" + "".join(f"{n:>24}" for n in names)
    lines.append(head)
    for case in PUSHDOWN_CASES:
        row = f"  {case:<42}"
        for name in names:
            flags = results[name]["pushdown"][case]
            cell = "/".join(
                "yes" if flags.get(k) else "no"
                for k in ("filterPushdown", "sortPushdown", "limitPushdown")
            )
            row += f"{cell:>24}"
        lines.append(row)
    for name in names:
        test = results[name].get("index_test")
        if not test:
            continue
        lines.append(f"{name}: {{{FIELD}: '{VALUE}'}} over {docs:,} documents:")
        for label, r in test.items():
            pg_ms = r["postgres_execution_ms"]
            pg_text = f"{pg_ms:7.1f} ms" if pg_ms is not None else "    n/a"
            lines.append(
                f"  {label:<36} {r['plan']:<40} PostgreSQL {pg_text}   find via FerretDB "
                f"{r['find_ms']:7.1f} ms ({r['matched']} docs)"
            )
    return "\n".join(lines)


async def run(args: argparse.Namespace, servers: dict[str, tuple[str, str | None]]) -> Any:
    rnd = random.Random(7)
    docs = [run_doc(rnd, i) for i in range(args.docs)]
    results = {}
    for name, (url, pg_url) in servers.items():
        # Each its own copy: insert_many adds nothing, but the ids must not collide.
        results[name] = await measure_store(name, url, pg_url, [dict(d) for d in docs])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=55_000)
    parser.add_argument("--list-runs", type=int, default=10_000, help="runs; 0 skips")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="runstore-local-store-") as tmp,
        stores(Path(tmp)) as servers,
    ):
        results = asyncio.run(run(args, servers))
        print(report(results, args.docs), flush=True)
        list_runs_json: dict[str, Any] = {}
        if args.list_runs:
            import list_runs

            for name, (url, _) in servers.items():
                out = Path(tmp) / f"list-runs-{len(list_runs_json)}.json"
                asyncio.run(
                    list_runs.bench(
                        argparse.Namespace(
                            mongo_url=url,
                            sizes=str(args.list_runs),
                            no_lists=False,
                            json=out,
                            label=name,
                        )
                    )
                )
                list_runs_json[name] = json.loads(out.read_text())
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"docs": args.docs, "stores": results, "list_runs": list_runs_json}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
