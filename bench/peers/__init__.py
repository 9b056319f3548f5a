"""The durable-execution peers bench/http_gateway.py measures Runstore against, one module
each, every one started from this repository's own scripts at its shipped durability
defaults: Restate (restate.py), DBOS over PostgreSQL (dbos_peer.py, postgres.py). The
Temporal dev server lives in http_gateway.py itself."""
