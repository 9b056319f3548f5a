"""Logging set-up shared by every service: one line per record, key=value friendly."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiokafka logs every rebalance step at INFO; keep its warnings only.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # PyMongo logs every command and its reply at DEBUG: at a service's DEBUG that buried
    # the service's own lines and slowed it several times over.
    logging.getLogger("pymongo").setLevel(logging.INFO)
