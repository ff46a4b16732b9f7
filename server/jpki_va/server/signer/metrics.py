"""The signer's Prometheus metrics: HSM signing latency, faults, reconnects, the queue.

One object implements both the HSM layer's observer and the signing queue's, so the
HSM layer and the queue stay free of prometheus_client. Each instance registers in
its own CollectorRegistry (several signers may share a test process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a fast software token (~1 ms) to a slow network HSM under load (seconds).
_SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class SignerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
