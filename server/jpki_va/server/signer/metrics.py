"""The signer's Prometheus metrics: HSM signing latency, faults, reconnects, the queue,
and whether snapshots get published.

Publishes are counted as they succeed and fail, with the age of the last one; the
release shows as `jpki_va_build_info`. One object implements the HSM layer's observer,
the signing queue's and the publish status's, so those stay free of prometheus_client.
Each instance registers in its own CollectorRegistry (several signers may share a
test process).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jpki_va.server.base.build_info import register_build_info

# From a fast software token (~1 ms) to a slow network HSM under load (seconds).
_SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class SignerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        register_build_info(self.registry, "signer")
        self.sign_seconds = Histogram(
            "jpki_va_hsm_sign_seconds",
            "Time to sign with an HSM key, including the wait for the shared session",
            ["key", "mechanism"],
            buckets=_SIGN_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "jpki_va_hsm_errors_total",
            "PKCS#11 failures by operation and return code (python-pkcs11 class name)",
            ["operation", "ckr"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "jpki_va_hsm_reconnects_total",
            "Times the shared HSM session was rebuilt after a fault",
            ["token"],
            registry=self.registry,
        )
        self.queue_waiting = Gauge(
            "jpki_va_sign_queue_depth",
            "Requests waiting for the HSM",
            registry=self.registry,
        )
        self.queue_rejected = Counter(
            "jpki_va_sign_queue_rejected_total",
            "Requests refused with RESOURCE_EXHAUSTED by the signing queue",
            ["reason"],
            registry=self.registry,
        )
        self.publishes = Counter(
            "jpki_va_publishes_total",
            "Snapshots published (periodic or requested, full or delta)",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "jpki_va_publish_failures_total",
            "Snapshot publishes (periodic or requested) that failed, by cause (hsm, other)",
            ["cause"],
            registry=self.registry,
        )
        self.publish_failing = Gauge(
            "jpki_va_publish_failing",
            "1 while the last publish failed: changes recorded since wait, responders "
            "answer the old status",
            registry=self.registry,
        )
        self.backup_last = Gauge(
            "jpki_va_registry_backup_last_timestamp_seconds",
            "When the last registry backup reached the object store (Unix time; 0: none yet)",
            registry=self.registry,
        )
        self.backup_failures = Counter(
            "jpki_va_registry_backup_failures_total",
            "Registry backups that failed",
            registry=self.registry,
        )
        self.publish_age = Gauge(
            "jpki_va_publish_age_seconds",
            "Seconds since the last snapshot was published (NaN: none yet)",
            registry=self.registry,
        )

        self.notices_pending = Gauge(
            "jpki_va_holder_notices_pending",
            "Notices to holders (第15条第2項 and its twins) not yet sent",
            registry=self.registry,
        )
        self.notice_oldest_age = Gauge(
            "jpki_va_holder_notice_oldest_pending_seconds",
            "Seconds since the oldest notice not yet sent became due (0: none pending)",
            registry=self.registry,
        )

    def notices_from(self, pending: Callable[[], int], oldest_age: Callable[[], float]) -> None:
        """Where the outbox's figures come from, read at each scrape."""
        self.notices_pending.set_function(pending)
        self.notice_oldest_age.set_function(oldest_age)

    # hsm.HsmObserver
    def signed(self, label: str, mechanism: str, seconds: float) -> None:
        self.sign_seconds.labels(label, mechanism).observe(seconds)

    def failed(self, operation: str, ckr: str) -> None:
        self.errors.labels(operation, ckr).inc()

    def reconnected(self, token_label: str) -> None:
        self.reconnects.labels(token_label).inc()

    # jpki_va.server.signer.signing_queue.QueueObserver
    def queue_depth(self, waiting: int) -> None:
        self.queue_waiting.set(waiting)

    def rejected(self, reason: str) -> None:
        self.queue_rejected.labels(reason).inc()

    def backed_up(self, at: float) -> None:
        self.backup_last.set(at)

    def backup_failed(self) -> None:
        self.backup_failures.inc()

    # jpki_va.server.signer.publish_status.PublishObserver
    def published(self) -> None:
        self.publishes.inc()
        self.publish_failing.set(0)

    def publish_failed(self, cause: str) -> None:
        self.publish_failures.labels(cause).inc()
        self.publish_failing.set(1)

    def publish_age_from(self, seconds: Callable[[], float]) -> None:
        """Where the age of the last publish comes from, read at each scrape."""
        self.publish_age.set_function(seconds)
