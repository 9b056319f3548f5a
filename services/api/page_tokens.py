"""`list_runs` page tokens: the last row's sort value and `_id`, a fingerprint of the
filters they were made for, and a MAC over both.

A token that was altered, signed under another key, or reused with other filters is
refused with a clear 400 instead of returning wrong rows. The MAC key comes from
`RUNSTORE_PAGE_TOKEN_SECRET`; without it each process signs with a random key of its
own (see `PageTokens.from_secret`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from datetime import datetime

from pydantic import SecretStr

from services.common.readmodels.run_filter import (
    BadPageToken,
    Cursor,
    Document,
    RunFilter,
    aware,
    iso,
)

log = logging.getLogger(__name__)

_TOKEN_VERSION = 1


class PageTokens:
    """Makes and checks list_runs page tokens under one MAC key.

    The key is not what keeps lists private (access rules do that; a made-up token can at
    most start a page elsewhere in a list its bearer may read anyway): it makes a token
    that was edited, or issued by an API with another key, fail with a clear 400 instead
    of paging from a position this API never returned. Every API instance behind one
    address must share the key (`RUNSTORE_PAGE_TOKEN_SECRET`) for tokens to survive a
    restart or land on another instance.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the page token key must not be empty")
        self._key = key

    @classmethod
    def from_secret(cls, secret: SecretStr | None) -> PageTokens:
        """Tokens keyed by `secret`; without one, by this process's random key (logged)."""
        if secret is not None and secret.get_secret_value():
            return cls(hashlib.sha256(secret.get_secret_value().encode()).digest())
        log.warning(
            "RUNSTORE_PAGE_TOKEN_SECRET is unset: list_runs page tokens are signed with a "
            "random key of this process, so they stop working after a restart and on "
            "other API instances (set the same secret on every instance)"
        )
        return PROCESS_TOKENS

    def make(self, flt: RunFilter, last_row: Document) -> str:
        """The token for the page after the one that ended with `last_row`."""
        payload = json.dumps(
            [_TOKEN_VERSION, flt.fingerprint(), iso(last_row.get(flt.sort_by)), last_row["_id"]],
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self.mac(payload))}"

    def read(self, flt: RunFilter, token: str) -> Cursor:
        """The cursor a token holds; BadPageToken if it is not one made for `flt`."""
        body, dot, mac = token.strip().partition(".")
        try:
            payload = _unb64(body)
            ok = bool(dot) and hmac.compare_digest(_unb64(mac), self.mac(payload))
        except (ValueError, binascii.Error):
            ok = False
        if not ok:
            raise BadPageToken(
                "next_page_token is not a token this API issued: it was altered, or signed "
                "under another page-token secret (another API instance, or this one before "
                "a restart without RUNSTORE_PAGE_TOKEN_SECRET); pass the next_page_token of "
                "the previous page unchanged, or start again from the first page"
            )
        try:
            version, fingerprint, value, run_id = json.loads(payload)
            if version != _TOKEN_VERSION or not isinstance(run_id, str) or not run_id:
                raise ValueError("bad fields")
            sort_value = None if value is None else aware(datetime.fromisoformat(value))
        except (ValueError, TypeError) as exc:
            raise BadPageToken("next_page_token is malformed") from exc
        if fingerprint != flt.fingerprint():
            raise BadPageToken(
                "next_page_token was issued for other filters, sort or order; repeat the "
                "request with the parameters of the first page"
            )
        return Cursor(sort_value, run_id)

    def mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:12]


PROCESS_TOKENS = PageTokens(secrets.token_bytes(32))
"""Signs with a random key made when this process started: used when no secret is set."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty or non-ASCII")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
