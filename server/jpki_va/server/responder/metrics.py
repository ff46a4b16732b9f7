"""The responder's Prometheus metrics (the signer's are in jpki_va.server.signer.metrics).

Workers count requests, answers and cache results in prometheus-client's
multiprocess mode (one mmap file per worker under PROMETHEUS_MULTIPROC_DIR, which
the main process sets before it starts them). The main process serves /metrics (on
loopback, or beyond it over TLS): the workers' files through a MultiProcessCollector,
and its own state (index sequence, snapshot age, CRL nextUpdate, the delegated
OCSP-signer certificates' expiry, ingest durations, provisions) computed when scraped.

Cardinality stays bounded: CRL series are per kind and issuer generation (the
earliest nextUpdate of its partitions); one series per partition (about 1,900
municipalities a kind) only when the operator asks for it (`per_partition`).
"""

from __future__ import annotations

import bisect
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind
from jpki_va.server.base.metrics_http import MetricsListener, serve_metrics
from jpki_va.server.base.private_files import private_dir
from jpki_va.server.responder.index_layout import CrlTimes
from jpki_va.server.responder.ocsp import DelegatedSigner
from jpki_va.server.responder.status import (
    Answer,
    Brief,
    PackedBatch,
    PackedSource,
    StatusSource,
    Target,
    briefs,
    code_labels,
)

#: A metric with its label values: what a pending count or time is kept under.
Key = tuple[Any, tuple[str, ...]]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
INGEST_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1200.0)


def prepare_multiprocess_dir(directory: Path) -> None:
    """Empty the workers' metric files and point worker processes started later at them."""
    shutil.rmtree(directory, ignore_errors=True)
    private_dir(directory)
    # Read by prometheus-client when a worker process imports it.
    os.environ[MULTIPROC_ENV] = str(directory)


def mark_worker_dead(pid: int, directory: Path) -> None:
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class WorkerMetrics:
    """What one worker counts; its values go to the multiprocess files, not a registry."""

    def __init__(self) -> None:
        self._requests = Counter(
            "jpki_va_requests",
            "Requests by protocol, method and outcome (gRPC code or HTTP status).",
            ["protocol", "method", "outcome"],
            registry=None,
        )
        self._latency = Histogram(
            "jpki_va_request_seconds",
            "gRPC request latency by method and outcome.",
            ["method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._answers = Counter(
            "jpki_va_answers",
            "Certificate status answers by status and loss cause.",
            ["status", "cause"],
            registry=None,
        )
        self._http_latency = Histogram(
            "jpki_va_http_request_seconds",
            "HTTP OCSP and CRL latency by route: from a request's last byte to its "
            "response written (signing and the provision commit included).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._cache = Counter(
            "jpki_va_ocsp_cache",
            "Signed OCSP response cache: hit, miss, or nonce (always signed fresh).",
            ["result"],
            registry=None,
        )
        self._preproduced = Counter(
            "jpki_va_ocsp_preproduced",
            "Pre-produced OCSP responses asked for: served, stale (not right now: signed "
            "live) or missing (signed live). Each one signed live is written through.",
            ["result"],
            registry=None,
        )
        # Per worker (a pid label): the cache's budget is per worker.
        self._cache_bytes = Gauge(
            "jpki_va_ocsp_cache_bytes",
            "What the signed OCSP responses a worker keeps cost, in bytes of memory "
            "(each entry charged as responder/ocsp_cache.py says; --ocsp-cache-mb bounds it).",
            registry=None,
            multiprocess_mode="liveall",
        )
        self._cache_entries = Gauge(
            "jpki_va_ocsp_cache_entries",
            "Signed OCSP responses a worker keeps.",
            registry=None,
            multiprocess_mode="liveall",
        )
        # The hot path only adds to this dict; flush() moves the counts into the
        # multiprocess files (a lock, a getpid and an mmap write per increment)
        # every few hundred milliseconds, off the request path.
        self._pending: dict[tuple[Any, tuple[str, ...]], int] = {}
        # Answers of packed batches by label code (status.label_code), their labels
        # looked up at flush: an int key hashes in a step, where a (metric, labels)
        # tuple is hashed afresh, with its inner tuple, on every add.
        self._tallied: dict[int, int] = {}
        self._lock = threading.Lock()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        # Latencies (gRPC per method and outcome, HTTP per route) as bucket counts
        # and [sum, observations] per histogram child, written and zeroed at flush;
        # kept for the worker's life, so `observer` can bind one child's lists once.
        self._times: dict[Key, tuple[list[int], list[float]]] = {}
        self._http_route = "other"  # the route of the HTTP request answered last

    def _count(self, metric: Any, labels: tuple[str, ...]) -> None:
        key = (metric, labels)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + 1

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def flush(self) -> None:
        """Publish the counts gathered since the last flush."""
        times: list[tuple[Key, list[int], float]] = []
        with self._lock:
            pending, self._pending = self._pending, {}
            tallied, self._tallied = self._tallied, {}
            for key, (counts, totals) in self._times.items():
                if totals[1]:
                    times.append((key, counts.copy(), totals[0]))
                    if key[0] is self._latency:  # a gRPC call is counted as it is timed
                        requests = (self._requests, ("grpc", *key[1]))
                        pending[requests] = pending.get(requests, 0) + int(totals[1])
                    counts[:] = [0] * len(counts)
                    totals[:] = [0.0, 0.0]
        for (metric, labels), amount in pending.items():
            self._child(metric, labels).inc(amount)
        for code, amount in tallied.items():
            self._child(self._answers, code_labels(code)).inc(amount)
        for (metric, labels), counts, total in times:
            child = self._child(metric, labels)
            # What Histogram.observe does, once per bucket rather than once per request
            # (each is a lock and an mmap write in multiprocess mode).
            child._sum.inc(total)
            for bucket, count in zip(child._buckets, counts, strict=True):
                if count:
                    bucket.inc(count)

    def cache_size(self, entries: int, size: int) -> None:
        """The OCSP response cache's size now (set with each flush, off the hot path)."""
        self._cache_entries.set(entries)
        self._cache_bytes.set(size)

    # HttpObserver
    def request(self, route: str, status: int) -> None:
        self._http_route = route
        self._count(self._requests, ("http", route, str(status)))

    # http.server.HttpTiming (the event loop thread only)
    def answered(self) -> str:
        """The route of the request HttpApp answered last (it told `request` so);
        "other" for the next one unless it says otherwise."""
        route, self._http_route = self._http_route, "other"
        return route

    def took(self, route: str, seconds: float) -> None:
        self.observe((self._http_latency, (route,)), seconds)

    def observe(self, key: Key, seconds: float) -> None:
        """A histogram observation kept as a bucket count until the next flush (a gRPC
        call's is also its count in `jpki_va_requests`, added at flush)."""
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            counts, totals = self._held(key)
            counts[bucket] += 1
            totals[0] += seconds
            totals[1] += 1

    def observer(self, key: Key) -> Callable[[float], None]:
        """`observe(key, ·)` with the histogram child's lists bound once: what the gRPC
        interceptor runs on every call of the usual outcome, which then looks up no key
        (`observe` looks one up per call, a tuple of tuples hashed afresh)."""
        with self._lock:
            counts, totals = self._held(key)
        lock, bisect_left = self._lock, bisect.bisect_left

        def observed(seconds: float) -> None:
            bucket = bisect_left(LATENCY_BUCKETS, seconds)
            with lock:
                counts[bucket] += 1
                totals[0] += seconds
                totals[1] += 1

        return observed

    def _held(self, key: Key) -> tuple[list[int], list[float]]:
        """The bucket counts and [sum, observations] of `key` (under the lock)."""
        held = self._times.get(key)
        if held is None:
            held = self._times[key] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0, 0.0])
        return held

    def answers(self, answers: tuple[tuple[str, str], ...]) -> None:
        """Answers given, by (status, cause)."""
        self.ocsp_answered(None, None, answers)

    # OcspObserver
    def ocsp_answered(
        self, cache: str | None, preproduced: str | None, answers: tuple[tuple[str, str], ...]
    ) -> None:
        # One call and one lock per OCSP request; no Counter (it costs more than one
        # HTTP answer's rest).
        pending, metric = self._pending, self._answers
        key: tuple[Any, tuple[str, ...]]
        with self._lock:
            if cache is not None:
                key = (self._cache, (cache,))
                pending[key] = pending.get(key, 0) + 1
            if preproduced is not None:
                key = (self._preproduced, (preproduced,))
                pending[key] = pending.get(key, 0) + 1
            for labels in answers:
                key = (metric, labels)
                pending[key] = pending.get(key, 0) + 1

    def tally(self, tally: Mapping[int, int]) -> None:
        """`answers`, already counted: a packed batch's tally (label code -> how many,
        status.tally_labels), its labels looked up at flush."""
        tallied = self._tallied
        with self._lock:
            for code, n in tally.items():
                tallied[code] = tallied.get(code, 0) + n

    def grpc_call(self, method: str, outcome: str, seconds: float) -> None:
        # Kept until the next flush: observed at once, the latency cost a unary Check
        # ~2.7 us of its ~14 us of Python (locks and mmap writes per bucket).
        self.observe(self.grpc_key(method, outcome), seconds)

    def grpc_key(self, method: str, outcome: str) -> Key:
        """The latency key of a gRPC call's `observe`: made once per method by the
        interceptor for its usual outcome, whose `observer` it binds."""
        return (self._latency, (method, outcome))


class ProducerMetrics:
    """What the replica's OCSP producer counts (multiprocess files, as the workers')."""

    def __init__(self) -> None:
        self._results = Counter(
            "jpki_va_ocsp_produce",
            "Certificates the OCSP producer went over: produced (had none), stale (signed "
            "again: status, signer or nearing nextUpdate), kept (still right), skipped "
            "(no response can be made: no valid delegated certificate).",
            ["result"],
            registry=None,
        )
        self._pass_seconds = Gauge(
            "jpki_va_ocsp_produce_pass_seconds",
            "How long the producer's last finished pass over the index took.",
            registry=None,
            multiprocess_mode="liveall",
        )
        self._store_entries = Gauge(
            "jpki_va_ocsp_preproduced_entries",
            "Pre-produced OCSP responses in the replica's store.",
            registry=None,
            multiprocess_mode="liveall",
        )
        self._store_bytes = Gauge(
            "jpki_va_ocsp_preproduced_bytes",
            "Bytes of the store of pre-produced OCSP responses (its pages in use).",
            registry=None,
            multiprocess_mode="liveall",
        )
        self._pending: dict[str, int] = {}

    def counted(self, result: str, n: int) -> None:
        self._pending[result] = self._pending.get(result, 0) + n

    def flush(self, pass_seconds: float | None, entries: int, size: int) -> None:
        pending, self._pending = self._pending, {}
        for result, n in pending.items():
            self._results.labels(result).inc(n)
        if pass_seconds is not None:
            self._pass_seconds.set(pass_seconds)
        self._store_entries.set(entries)
        self._store_bytes.set(size)


class CountedSource:
    """A StatusSource layer that counts its answers by status and cause."""

    def __init__(self, inner: StatusSource, metrics: WorkerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        # Asked once: a runtime Protocol check costs microseconds per call.
        self._packed_inner = inner if isinstance(inner, PackedSource) else None

    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer:
        answer = self._inner.status(kind, serial, as_of)
        self._metrics.answers((answer.labels,))
        return answer

    def briefs(self, targets: Sequence[Target]) -> list[Brief]:
        out = briefs(self._inner, targets)
        self._metrics.answers(tuple(brief.labels for brief in out))
        return out

    def packed(self, keys: list[bytes], when: int) -> PackedBatch | None:
        """The inner source's values, counted once the batch is answered (its tally)."""
        inner = self._packed_inner
        batch = None if inner is None else inner.packed(keys, when)
        if batch is not None:
            batch.observers.append(self._metrics.tally)
        return batch


ProvisionCounts = Callable[[], Iterable[tuple[str, str, float]]]  # (type, verifier, count)


@dataclass(frozen=True)
class IndexState:
    """What the main process last saw of the live index (plain data: a scrape never
    opens LMDB, which the ingester may be writing in this process)."""

    sequence: int
    created_at: datetime
    crls: dict[tuple[CertKind, bytes, str], CrlTimes]


class ResponderCollector(Collector):
    """The main process's own metrics: ingest durations and the live index's state."""

    def __init__(
        self,
        clock: Clock,
        provisions: ProvisionCounts | None = None,
        *,
        per_partition: bool = False,
    ) -> None:
        self._state: IndexState | None = None
        self._clock = clock
        self._provisions = provisions
        self._per_partition = per_partition
        self._ocsp_signer: Callable[[], DelegatedSigner | None] | None = None
        self._rotation: Callable[[], tuple[bool, int]] | None = None
        self._lock = threading.Lock()
        self._ingest_buckets = [0] * (len(INGEST_BUCKETS) + 1)
        self._ingest_sum = 0.0

    def count_provisions(self, provisions: ProvisionCounts) -> None:
        """The hook for the provision counters kept for the annual report (第41条)."""
        self._provisions = provisions

    def ocsp_signer_from(self, current: Callable[[], DelegatedSigner | None]) -> None:
        """Where the delegated OCSP-signer certificates come from, read at each scrape."""
        self._ocsp_signer = current

    def rotation_from(self, current: Callable[[], tuple[bool, int]]) -> None:
        """Where (in rotation, newest sequence in the store) come from, at each scrape."""
        self._rotation = current

    def index_state(self, state: IndexState) -> None:
        self._state = state

    def ingested(self, seconds: float) -> None:
        with self._lock:
            self._ingest_buckets[bisect.bisect_left(INGEST_BUCKETS, seconds)] += 1
            self._ingest_sum += seconds

    def collect(self) -> Iterator[Any]:
        with self._lock:
            counts, total = list(self._ingest_buckets), self._ingest_sum
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*INGEST_BUCKETS, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily(
            "jpki_va_ingest_seconds",
            "Time to verify a snapshot and build and publish its index.",
            buckets=buckets,
            sum_value=total,
        )
        state = self._state
        if state is not None:
            yield GaugeMetricFamily(
                "jpki_va_index_sequence", "Sequence of the snapshot served.", state.sequence
            )
            yield GaugeMetricFamily(
                "jpki_va_snapshot_age_seconds",
                "Age of the snapshot served.",
                (self._clock.now() - state.created_at).total_seconds(),
            )
            yield from self._crl_times(state)
        yield from self._ocsp_signer_expiry()
        if self._rotation is not None:
            in_rotation, newest = self._rotation()
            yield GaugeMetricFamily(
                "jpki_va_in_rotation",
                "1 while this replica belongs in a balancer's rotation (health "
                "jpki-va.rotation): an index, not behind the newest snapshot past max_lag, "
                "the newest not refused.",
                int(in_rotation),
            )
            yield GaugeMetricFamily(
                "jpki_va_newest_snapshot_sequence",
                "The highest committed snapshot sequence seen in the store.",
                newest,
            )
        if self._provisions is not None:
            provisions = CounterMetricFamily(
                "jpki_va_provisions",
                "Provisions by type and verifier (counted for the annual report).",
                labels=["type", "verifier"],
            )
            for provision, verifier, total in self._provisions():
                provisions.add_metric([provision, verifier], total)
            yield provisions

    def _crl_times(self, state: IndexState) -> Iterator[Any]:
        earliest: dict[tuple[str, str], float] = {}
        detail = GaugeMetricFamily(
            "jpki_va_crl_partition_next_update_timestamp_seconds",
            "nextUpdate of the CRL served, per kind, issuer generation and partition "
            "(only with the per-partition option).",
            labels=["kind", "issuer", "partition"],
        )
        for (kind, kid, partition), times in sorted(state.crls.items()):
            labels = (kind.slug, kid.hex()[:16])
            when = times.next_update.timestamp()
            earliest[labels] = min(when, earliest.get(labels, when))
            if self._per_partition:
                detail.add_metric([*labels, partition], when)
        crl = GaugeMetricFamily(
            "jpki_va_crl_next_update_timestamp_seconds",
            "The earliest nextUpdate of the CRLs served, per kind and issuer generation.",
            labels=["kind", "issuer"],
        )
        for labels, when in sorted(earliest.items()):
            crl.add_metric(list(labels), when)
        yield crl
        if self._per_partition:
            yield detail

    def _ocsp_signer_expiry(self) -> Iterator[Any]:
        signer = None if self._ocsp_signer is None else self._ocsp_signer()
        if signer is None:
            return
        expiry = GaugeMetricFamily(
            "jpki_va_ocsp_signer_expiry_timestamp_seconds",
            "notAfter of the delegated OCSP-signer certificate in use, per issuer generation.",
            labels=["issuer"],
        )
        for kid, cert in sorted(signer.certificates.items()):
            expiry.add_metric([kid.hex()[:16]], cert.not_valid_after_utc.timestamp())
        yield expiry


class MetricsServer:
    """GET /metrics: the workers' files and the main process's own collectors (its
    state, and registries such as the ingester's), on loopback or over TLS."""

    def __init__(
        self, listener: MetricsListener, directory: Path, collectors: Iterable[Collector]
    ) -> None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        for collector in collectors:
            registry.register(collector)
        self._server, self._thread = serve_metrics(listener, registry)
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
