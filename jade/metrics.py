"""Every metric name, in one place. Names are the runbook's and the Grafana dashboard's (API.md
§1): ``jadevectordb_*`` plus the unprefixed search series Grafana queries. Each server instance
owns a ``Metrics`` (its own registry), so tests can run several servers in one process.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import repeat

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1)
P = "jadevectordb_"

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Label names Prometheus attaches to every scraped series itself: a metric carrying one of
# them has it renamed to ``exported_<name>`` on scrape (``honor_labels: false``), and the
# dashboard's ``sum by (job)`` then merges every series of the target. Never use them.
RESERVED_LABELS = frozenset({"job", "instance"})

# Gauges once named like counters (``_total``, which Prometheus keeps for counters): each is
# exported under its gauge name and, for one more release, under the old name too, a
# deprecated alias with the same value (the dashboard queries the new names). The old
# ``users_total`` is one of API.md §1's runbook names. Remove the aliases in the next release.
DEPRECATED_GAUGE_ALIASES: dict[str, str] = {
    P + "users_total": P + "users",
    P + "vectors_total": P + "vectors",
    P + "databases_total": P + "databases",
}
FOLD_AT = 4096  # pending updates a series holds before folding them itself


class _Series:
    """One labelled series. An update is a deque append: atomic under the GIL from any thread,
    with no lock and no Python-level bookkeeping (prometheus_client's ``inc``/``observe`` take
    a lock and several calls each: about 2-5 µs, eleven of them per search request). The
    pending updates are folded into the totals under a lock when scraped, or by the updater
    once ``FOLD_AT`` are pending."""

    __slots__ = ("_pending", "_lock", "_bounds", "counts", "total", "created")

    def __init__(self, bounds: tuple[float, ...] | None) -> None:
        self._pending: deque[float] = deque()
        self._lock = threading.Lock()
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1) if bounds is not None else []  # last: +Inf
        self.total = 0.0  # a counter's value; a histogram's sum
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        q = self._pending
        q.append(amount)
        if len(q) > FOLD_AT:
            self.fold()

    def observe(self, value: float) -> None:
        q = self._pending
        q.append(value)
        if len(q) > FOLD_AT:
            self.fold()

    def value(self) -> float:
        """A counter's value, a histogram's sum of observations."""
        self.fold()
        return self.total

    def fold(self) -> None:
        """Move the pending updates into the totals (appends racing with this stay pending)."""
        with self._lock:
            q, bounds = self._pending, self._bounds
            n = len(q)
            pop = q.popleft
            values = [pop() for _ in range(n)]
            self.total += sum(values)
            if bounds is not None:
                counts = self.counts
                for i in map(bisect_left, repeat(bounds, n), values):
                    counts[i] += 1  # the first bucket with v <= le


class _Family:
    """A counter or histogram family with prometheus_client's exposition (``_total``,
    ``_bucket``/``_count``/``_sum`` and ``_created``) and its ``labels(...).inc()`` /
    ``observe()`` interface, built on ``_Series``. Registered as a collector."""

    def __init__(self, kind: str, name: str, doc: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.kind, self.doc = kind, doc
        self.name = name[: -len("_total")] if kind == "counter" and name.endswith("_total") \
            else name
        self.labelnames = tuple(labelnames)
        self.bounds = None if buckets is None else tuple(float(b) for b in buckets
                                                         if b != float("inf"))
        self._children: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._unlabelled = self._child(())
        if registry is not None:
            registry.register(self)

    def _child(self, values: tuple[str, ...]) -> _Series:
        with self._lock:
            s = self._children.get(values)
            if s is None:
                s = self._children[values] = _Series(self.bounds)
            return s

    def labels(self, *values: object) -> _Series:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        return self._children.get(key) or self._child(key)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled.inc(amount)

    def observe(self, value: float) -> None:
        self._unlabelled.observe(value)

    def value(self) -> float:
        """The unlabelled series' value (a histogram: the sum of its observations)."""
        return self._unlabelled.value()

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.doc, self.kind)

    def collect(self) -> Iterator[Metric]:
        main = Metric(self.name, self.doc, self.kind)
        created = Metric(self.name + "_created", self.doc, "gauge")
        with self._lock:
            children = list(self._children.items())
        for values, s in children:
            s.fold()
            labels = dict(zip(self.labelnames, values, strict=True))
            if self.bounds is None:
                main.add_sample(self.name + "_total", labels, s.total)
            else:
                acc = 0
                for le, n in zip((*self.bounds, float("inf")), s.counts, strict=True):
                    acc += n
                    main.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(le)},
                                    float(acc))
                main.add_sample(self.name + "_count", labels, float(acc))
                main.add_sample(self.name + "_sum", labels, s.total)
            created.add_sample(self.name + "_created", labels, s.created)
        yield main
        yield created


def Counter(name: str, doc: str, labelnames: Sequence[str] = (), *,  # noqa: N802
            registry: CollectorRegistry | None = None) -> _Family:
    return _Family("counter", name, doc, labelnames, registry=registry)


def Histogram(name: str, doc: str, labelnames: Sequence[str] = (), *,  # noqa: N802
              buckets: Sequence[float], registry: CollectorRegistry | None = None) -> _Family:
    return _Family("histogram", name, doc, labelnames, buckets=buckets, registry=registry)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # -- the runbook's names (API.md §1) ----------------------------------------------
        self.auth_requests = Counter(
            P + "auth_requests_total", "Authentication attempts", ["method", "outcome"], registry=r
        )
        self.auth_duration = Histogram(
            P + "auth_duration_seconds", "Authentication time", buckets=BUCKETS, registry=r
        )
        self.auth_errors = Counter(
            P + "auth_errors_total", "Authentication errors", ["reason"], registry=r
        )
        self.active_sessions = Gauge(
            P + "active_sessions", "Sessions with a live token", registry=r
        )
        self.permission_checks = Counter(
            P + "permission_checks_total", "Permission checks", ["outcome"], registry=r
        )
        self.permission_check_duration = Histogram(
            P + "permission_check_duration_seconds",
            "Permission check time",
            buckets=BUCKETS,
            registry=r,
        )
        self.permission_cache_hits = Counter(
            P + "permission_cache_hits_total", "Permission cache hits", registry=r
        )
        self.permission_cache_misses = Counter(
            P + "permission_cache_misses_total", "Permission cache misses", registry=r
        )
        self.db_operations = Counter(
            P + "db_operations_total", "Database operations", ["operation", "outcome"], registry=r
        )
        self.db_operation_duration = Histogram(
            P + "db_operation_duration_seconds",
            "Database operation time",
            ["operation"],
            buckets=BUCKETS,
            registry=r,
        )
        self.db_connection_errors = Counter(
            P + "db_connection_errors_total", "Storage access errors", registry=r
        )
        self.db_query_retries = Counter(
            P + "db_query_retries_total", "Retried storage operations (map growth)", registry=r
        )
        # map growths already counted into db_query_retries (the envs keep running totals;
        # refresh_gauges adds the difference when scraped)
        self.map_grows_seen = 0
        self.users = Gauge(P + "users", "Registered users", registry=r)
        self.user_operations = Counter(
            P + "user_operations_total", "User operations", ["operation"], registry=r
        )
        self.failed_logins = Counter(P + "failed_logins_total", "Failed logins", registry=r)
        self.locked_accounts = Counter(
            P + "locked_accounts_total",
            "Lockouts after repeated failed logins, of any name tried (existing or not: the "
            "answer must not tell which names exist)", registry=r)
        self.rate_limit_exceeded = Counter(
            P + "rate_limit_exceeded_total",
            "Requests refused by a rate limit",
            ["limit"],
            registry=r,
        )
        self.ip_blocks = Counter(P + "ip_blocks_total", "IP blocks imposed", registry=r)
        self.circuit_breaker_changes = Counter(
            P + "circuit_breaker_state_changes_total", "Circuit breaker state changes", registry=r
        )
        self.circuit_breaker_open = Gauge(
            P + "circuit_breaker_open", "1 while a circuit breaker is open", registry=r
        )
        # -- search series Grafana queries (unprefixed, as the dashboard has them) -------------
        self.search_requests = Counter("similarity_search_requests_total", "Searches", registry=r)
        self.search_duration = Histogram(
            "similarity_search_duration_seconds", "Search time", buckets=FAST_BUCKETS, registry=r
        )
        self.search_active = Gauge(
            "similarity_search_active_requests", "Searches in flight", registry=r
        )
        # a plain counter the search handler bumps (no lock, no prometheus call per search);
        # the gauge reads it when scraped
        self.searches_in_flight = 0
        self.search_active.set_function(lambda: self.searches_in_flight)
        self.filtered_search_requests = Counter(
            "filtered_similarity_search_requests_total", "Filtered searches", registry=r
        )
        self.filtered_search_duration = Histogram(
            "filtered_similarity_search_duration_seconds",
            "Filtered search time",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.filter_cache_hits = Counter("filter_cache_hits_total", "Filter cache hits", registry=r)
        self.filter_cache_misses = Counter(
            "filter_cache_misses_total", "Filter cache misses", registry=r
        )
        # -- HTTP -------------------------------------------------------------------------
        self.http_requests = Counter(
            P + "http_requests_total", "HTTP requests", ["method", "status"], registry=r
        )
        self.http_duration = Histogram(
            P + "http_request_duration_seconds",
            "HTTP request time",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        # -- the log and the indexes --------------------------------------------------------
        self.wal_last_lsn = Gauge(P + "wal_last_lsn", "Last LSN in the log", registry=r)
        self.wal_append_duration = Histogram(
            P + "wal_append_duration_seconds",
            "Durable commit time of one log group",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.wal_group_requests = Histogram(
            P + "wal_group_commit_size",
            "Requests sharing one durable commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.wal_records = Counter(P + "wal_records_total", "Records appended", registry=r)
        self.wal_map_bytes = Gauge(
            P + "wal_map_size_bytes", "LMDB map size of the data file", registry=r
        )
        self.vectors = Gauge(P + "vectors", "Stored vectors", registry=r)
        self.databases = Gauge(P + "databases", "Databases", registry=r)
        self.index_size = Gauge(
            P + "index_size_bytes", "Approximate in-memory index size", registry=r
        )
        self.index_vectors = Gauge(
            P + "index_vectors", "Vectors in the in-memory indexes", registry=r
        )
        self.projection_failures = Counter(
            P + "projection_apply_failures_total",
            "Committed records a projection could not apply (it is then rebuilt from the store "
            "or caught up from the log)",
            ["projection"],
            registry=r,
        )
        self.projection_failures_seen: dict[str, int] = {}
        self.projections_behind = Gauge(
            P + "projections_behind",
            "Projections not serving the log's state now (failed index databases, an auth "
            "store behind the log)",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            P + "index_checkpoint_age_seconds",
            "Seconds since the last index checkpoint (-1: none yet)",
            registry=r,
        )
        self.checkpoint_damaged = Counter(
            P + "index_checkpoint_damaged_total",
            "Index checkpoints not loaded at start-up because a file was missing, damaged (not "
            "matching its checksum) or unreadable: that database was rebuilt from the store",
            registry=r,
        )
        self.checkpoint_damaged_seen = 0
        self.store_damaged = Counter(
            P + "store_value_damaged_total",
            "Stored values (vectors, metadata) refused on read because they did not match "
            "their checksum",
            registry=r,
        )
        self.store_damaged_seen = 0

        # -- storage (disk) ---------------------------------------------------------------
        self.disk_free = Gauge(
            P + "disk_free_bytes", "Free bytes on the data directory's file system", registry=r)
        self.storage_full = Gauge(
            P + "storage_full",
            "1 while writes are refused because the data directory's disk is full or below "
            "storage.reserve_bytes (reads go on)",
            registry=r,
        )
        self.writes_refused_storage = Counter(
            P + "writes_refused_insufficient_storage_total",
            "Writes refused with 507 insufficient_storage", registry=r)
        self.writes_refused_storage_seen = 0

        # -- the index follower (graphs behind the acknowledged writes) --------------------
        self.index_lag_records = Gauge(
            P + "index_lag_records",
            "Log records since the oldest vector write the HNSW graphs have not taken yet "
            "(searches scan those exactly); 0 when level", registry=r)
        self.index_lag_seconds = Gauge(
            P + "index_lag_seconds",
            "Age of the oldest vector write the HNSW graphs have not taken yet", registry=r)
        self.index_lag_vectors = Gauge(
            P + "index_lag_vectors",
            "Vectors written and not in an HNSW graph yet (writes wait beyond "
            "index.lag_max_vectors)", registry=r)
        self.writes_refused_index_behind = Counter(
            P + "writes_refused_index_behind_total",
            "Vector writes refused with 503 index_behind (the graphs stayed too far behind)",
            registry=r)
        self.writes_refused_index_behind_seen = 0

        # -- scheduled jobs (label ``task``: ``job`` is Prometheus's own, RESERVED_LABELS) -----
        self.job_runs = Counter(P + "scheduler_job_runs_total", "Scheduled job runs, by task "
                                "(the job's name) and outcome", ["task", "outcome"], registry=r)
        self.job_last_success = Gauge(P + "scheduler_job_last_success_timestamp_seconds",
                                      "When each job (label task) last succeeded", ["task"],
                                      registry=r)
        self.offsite_bytes = Counter(
            P + "backup_offsite_bytes_total",
            "Bytes of snapshots and archive segments copied to an offsite backup target (label "
            "target: path or s3; when each last succeeded: "
            "scheduler_job_last_success_timestamp_seconds{task=\"offsite\"})",
            ["target"], registry=r)

        # -- replication ------------------------------------------------------------------
        self.replication_lag_records = Gauge(
            P + "replication_lag_records", "Records the replica has not applied yet", registry=r)
        self.replication_lag_seconds = Gauge(
            P + "replication_lag_seconds", "Age of the oldest record the replica has not applied",
            registry=r)
        self.replication_applied_lsn = Gauge(P + "replication_applied_lsn",
                                             "Last LSN applied on this replica", registry=r)
        self.replication_reconnects = Counter(P + "replication_reconnects_total",
                                              "Times the replica reconnected", registry=r)
        self.replica_lag = Gauge(P + "replication_replica_lag_records",
                                 "Per follower, records behind this primary", ["replica"],
                                 registry=r)
        # synchronous replication (replication.synchronous_replicas), on the primary
        self.replication_sync_wait = Histogram(
            P + "replication_sync_wait_seconds",
            "Time a write's answer waited for its synchronous replica acknowledgements (a "
            "write that timed out counts the whole timeout)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                     10, 30), registry=r)
        self.replication_sync_replicas_connected = Gauge(
            P + "replication_sync_replicas_connected",
            "Replicas counting as synchronous with a replication stream open", registry=r)
        self.replication_sync_timeouts = Counter(
            P + "replication_sync_timeouts_total",
            "Writes answered 503 replication_timeout: durable on the primary, not confirmed on "
            "enough synchronous replicas in time", registry=r)

        # -- the process (process_*: memory, CPU, open files; python_*) ------------------------
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        current = {P + "users": self.users, P + "vectors": self.vectors,
                   P + "databases": self.databases}
        r.register(_Aliases({old: current[new] for old, new in DEPRECATED_GAUGE_ALIASES.items()}))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Aliases:
    """Exports each deprecated gauge name with the value of the gauge that replaced it."""

    def __init__(self, gauges: dict[str, Gauge]) -> None:
        self._gauges = gauges  # old name -> the gauge now holding the value

    def describe(self) -> Iterator[Metric]:
        for old in self._gauges:
            yield GaugeMetricFamily(old, "Deprecated alias")

    def collect(self) -> Iterator[Metric]:
        for old, gauge in self._gauges.items():
            for family in gauge.collect():
                for sample in family.samples:
                    yield GaugeMetricFamily(
                        old, f"Deprecated alias of {family.name} (same value; removed in the "
                        "next release)", value=sample.value)
