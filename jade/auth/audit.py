"""Security audit events (API.md §10): each one is a JSON line in ``audit.log`` (through the
``jade.audit`` logger, which the logging set-up sends to that file) and is kept in a bounded
in-memory ring for ``GET /v1/security/audit-log``. On start-up the ring is refilled from the
tail of the audit file, so the endpoint survives restarts."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

import orjson

EVENT_TYPES = (
    "AUTHENTICATION_ATTEMPT",
    "AUTHENTICATION_SUCCESS",
    "AUTHENTICATION_FAILURE",
    "AUTHORIZATION_CHECK",
    "AUTHORIZATION_GRANTED",
    "AUTHORIZATION_DENIED",
    "DATA_ACCESS",
    "DATA_MODIFICATION",
    "DATA_DELETION",
    "CONFIGURATION_CHANGE",
    "ADMIN_OPERATION",
    "SECURITY_POLICY_VIOLATION",
)

audit_log = logging.getLogger("jade.audit")


class Audit:
    def __init__(self, path: str | None = None, capacity: int = 10_000) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        if path and os.path.exists(path):
            self._reload(path, capacity)

    def _reload(self, path: str, capacity: int) -> None:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 4 * 1024 * 1024))
                lines = fh.read().splitlines()[-capacity:]
        except OSError:
            return
        for line in lines:
            try:
                ev = orjson.loads(line[line.index(b"{") :])
            except (ValueError, orjson.JSONDecodeError):
                continue
            if isinstance(ev, dict) and ev.get("event_type") in EVENT_TYPES:
                self.events.append(ev)
                self.counts[ev["event_type"]] += 1

    def record(
        self,
        event_type: str,
        *,
        user_id: str | None = None,
        ip: str = "",
        resource: str = "",
        operation: str = "",
        success: bool = True,
        details: str = "",
        session_id: str | None = None,
        client_info: str = "",
        request_id: str | None = None,
    ) -> dict[str, Any]:
        assert event_type in EVENT_TYPES, event_type
        ev = {
            "event_id": uuid.uuid4().hex[:16],
            "event_type": event_type,
            "user_id": user_id or "",
            "ip_address": ip,
            "resource_accessed": resource,
            "operation": operation,
            "success": success,
            "details": details,
            "session_id": session_id or "",
            "client_info": client_info,
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if request_id:
            ev["request_id"] = request_id
        with self._lock:
            self.events.append(ev)
            self.counts[event_type] += 1
        audit_log.info(orjson.dumps(ev).decode(), extra={"audit": True})
        return ev

    def query(
        self, *, user_id: str | None = None, event_type: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            for ev in reversed(self.events):
                if user_id is not None and ev["user_id"] != user_id:
                    continue
                if event_type is not None and ev["event_type"] != event_type:
                    continue
                out.append(ev)
                if len(out) >= limit:
                    break
        return out

    def stats(self) -> dict[str, Any]:
        with self._lock:
            total = sum(self.counts.values())
            out: dict[str, Any] = {"total_events": total}
            for t in EVENT_TYPES:
                out[t.lower()] = self.counts.get(t, 0)
            out["failed_events"] = sum(1 for e in self.events if not e["success"])
        return out
