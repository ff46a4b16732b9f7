"""A worker's answers counted by status and cause: every path that counts them (a
packed batch's tally by label code, briefs' labels, an OCSP request's answers) adds
up in the same counter at flush, and nothing is published before it."""

from __future__ import annotations

import pytest

from jpki_va.core.domain import LossCause, Status
from jpki_va.server.responder.metrics import WorkerMetrics
from jpki_va.server.responder.status import label_code


def _answers(metrics: WorkerMetrics, status: str, cause: str) -> float:
    value: float = metrics._answers.labels(status, cause)._value.get()
    return value


def test_tallies_labels_and_ocsp_answers_add_up_at_flush() -> None:
    metrics = WorkerMetrics()
    good = label_code(Status.GOOD, 0)
    revoked = label_code(Status.REVOKED, LossCause.HOLDER_REQUEST)
    metrics.tally({good: 3, revoked: 1})
    metrics.tally({good: 1})
    metrics.answers((("good", "none"), ("revoked", "holder-request")))
    metrics.ocsp_answered("miss", None, (("good", "none"),))
    metrics.tally({label_code(Status.UNKNOWN, 0): 2})
    assert _answers(metrics, "good", "none") == 0  # held until the flush
    metrics.flush()
    assert _answers(metrics, "good", "none") == 6
    assert _answers(metrics, "revoked", "holder-request") == 2
    assert _answers(metrics, "unknown", "none") == 2
    metrics.flush()  # a flush publishes what came since the last, once
    assert _answers(metrics, "good", "none") == 6
    metrics.tally({good: 1})
    metrics.flush()
    assert _answers(metrics, "good", "none") == 7


def _requests(metrics: WorkerMetrics, method: str, outcome: str) -> float:
    value: float = metrics._requests.labels("grpc", method, outcome)._value.get()
    return value


def _latency(metrics: WorkerMetrics, method: str, outcome: str) -> tuple[float, list[float]]:
    child = metrics._latency.labels(method, outcome)
    return child._sum.get(), [bucket.get() for bucket in child._buckets]


def test_a_bound_observer_and_observe_count_each_call_once_at_flush() -> None:
    """The interceptor's bound observer for the usual outcome and `grpc_call` for any
    other (or a stream's) keep one histogram child and one request count per method
    and outcome: every call counted once, in its bucket, across flushes."""
    metrics = WorkerMetrics()
    observed = metrics.observer(metrics.grpc_key("Check", "OK"))
    observed(0.0002)  # the first bucket (0.5 ms)
    observed(0.003)  # the fourth (5 ms)
    metrics.grpc_call("Check", "OK", 0.0002)  # a handler that set OK itself
    metrics.grpc_call("Check", "NOT_FOUND", 2.0)
    assert _requests(metrics, "Check", "OK") == 0  # held until the flush
    metrics.flush()
    assert _requests(metrics, "Check", "OK") == 3
    assert _requests(metrics, "Check", "NOT_FOUND") == 1
    total, buckets = _latency(metrics, "Check", "OK")
    assert total == pytest.approx(0.0034)
    assert buckets[0] == 2 and buckets[3] == 1 and sum(buckets) == 3
    assert sum(_latency(metrics, "Check", "NOT_FOUND")[1]) == 1
    metrics.flush()  # nothing new: nothing more
    assert _requests(metrics, "Check", "OK") == 3
    observed(0.0002)
    metrics.flush()
    assert _requests(metrics, "Check", "OK") == 4
    assert _latency(metrics, "Check", "OK")[1][0] == 3
