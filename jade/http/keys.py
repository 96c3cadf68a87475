"""Typed keys for the application and request storage (aiohttp's AppKey/RequestKey)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from jade.analytics import Analytics
from jade.auth.audit import Audit
from jade.auth.principal import Principal
from jade.auth.service import AuthService
from jade.backup.jobs import Backups
from jade.engine import Engine
from jade.http.inflight import InFlight
from jade.http.replication_state import Replicas
from jade.metrics import Metrics
from jade.scheduler import Scheduler
from jade.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", Metrics)
ACCESS = web.AppKey("access", dict)
ROUTE_TABLE = web.AppKey("routes", tuple)
OBSERVE: web.AppKey[Callable[..., None]] = web.AppKey("observe_request")
# optional hooks other parts (auth, replication) install
VISIBLE_DATABASES: web.AppKey[Callable[..., Any]] = web.AppKey("visible_databases")
AUTH_HEALTH: web.AppKey[Callable[[], tuple[bool, str]]] = web.AppKey("auth_health")
CONNECTIONS: web.AppKey[Callable[[], int]] = web.AppKey("connections")

REQUEST_ID = web.RequestKey("request_id", str)
ACTOR = web.RequestKey("actor", str)

# authentication (jade.auth) and background work
AUTH = web.AppKey("auth", AuthService)
AUDIT = web.AppKey("audit", Audit)
SHUTDOWN = web.AppKey("shutdown", asyncio.Event)  # set: serve stops gracefully
SCHEDULER = web.AppKey("scheduler", Scheduler)
BACKUPS = web.AppKey("backups", Backups)
PRINCIPAL = web.RequestKey("principal", Principal)
CLIENT_IP = web.RequestKey("client_ip", str)

# replication: the primary's view of its followers; a follower installs REPLICA_STATUS
REPLICAS = web.AppKey("replicas", Replicas)
REPLICA_STATUS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("replica_status")
OPENAPI = web.AppKey("openapi", dict)
PROMOTE: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("promote")
# the coordinator's view of the cluster (replica.cluster), installed with a coordinator
CLUSTER_STATUS: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("cluster")
CLUSTER_READY: web.AppKey[Callable[[], tuple[bool, str]]] = web.AppKey("cluster_ready")

INFLIGHT = web.AppKey("inflight", InFlight)  # the requests being handled (shutdown drains)
ANALYTICS = web.AppKey("analytics", Analytics)  # query analytics (jade.http.analytics)
