"""The CLI's HTTP client for the Runstore API (the same REST contract the SDK speaks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


class ApiError(Exception):
    """An answer the CLI reports and exits non-zero on."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SseEvent:
    id: str | None
    event: str
    data: Any


class RunstoreApi:
    def __init__(self, url: str, api_key: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def _check(self, reply: httpx.Response) -> httpx.Response:
        if reply.status_code >= 400:
            try:
                detail = reply.json().get("detail", reply.text)
            except ValueError:
                detail = reply.text
            raise ApiError(
                reply.status_code, detail if isinstance(detail, str) else json.dumps(detail)
            )
        return reply

    def get(self, path: str, params: Any = None) -> Any:
        return self._check(self._http.get(path, params=params)).json()

    def post(self, path: str, body: Any = None) -> Any:
        reply = self._check(self._http.post(path, json=body))
        return reply.json() if reply.content else None

    def delete(self, path: str) -> None:
        self._check(self._http.delete(path))

    def stream(
        self, path: str, params: Any = None, last_event_id: str | None = None
    ) -> Iterator[SseEvent]:
        """Server-sent events of `path`, parsed frame by frame (comments skipped)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self._http.stream("GET", path, params=params, headers=headers, timeout=None) as reply:
            if reply.status_code >= 400:
                reply.read()
                self._check(reply)
            frame: dict[str, str] = {}
            for line in reply.iter_lines():
                if not line:
                    if "data" in frame:
                        yield SseEvent(
                            frame.get("id"),
                            frame.get("event", "message"),
                            json.loads(frame["data"]),
                        )
                    frame = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    frame[name] = value[1:] if value.startswith(" ") else value
