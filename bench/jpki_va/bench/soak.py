"""`bench soak`: mixed load for a long while, as the registry, the verifiers and the
processes change underneath, and every answer judged against what is known to be true.

The real signer and responder run from a data set (with the signer's default delta
interval). Clients call unary Check, CheckStream (a new stream every `stream_batches`
batches, within the responder's batches per stream), HTTP OCSP and WatchRevocations on
serials of the data set's pool while a loss is recorded every few seconds, a
throwaway verifier is added and removed, and one worker is SIGKILLed halfway through.

An answer is wrong when it contradicts the truth once the freshness bound has passed:
GOOD for a certificate whose loss the signer acknowledged more than `bound` seconds
before the call, REVOKED for one never lost, any other status for a serial that was
never issued; a call as the throwaway verifier that succeeds more than `bound` after
its removal (or is refused more than `bound` after its addition); a loss the watch has
not delivered by the end. Errors are counted apart: those within `fault_window`
seconds of the worker kill are the fault's; any other error is unexpected. The
workers' private memory is sampled throughout and its slope reported.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from jpki_va.bench.dataset import DataSet
from jpki_va.bench.suite import RunningVa, _issuers, _kb_fields, check_request
from jpki_va.client._ocsp import build_request
from jpki_va.core.domain import CertKind, Role, Status, serial_from_bytes, serial_to_bytes
from jpki_va.protos import crl_pb2, crl_pb2_grpc, signer_pb2, va_pb2, verifiers_pb2
from jpki_va.server.pki.cert_profile import throwaway_client_certificate

CHURN_VERIFIER = "bench-soak-churn"
_OCSP_STATUS = {
    ocsp.OCSPCertStatus.GOOD: Status.GOOD,
    ocsp.OCSPCertStatus.REVOKED: Status.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: Status.UNKNOWN,
}


@dataclass(frozen=True)
class SoakSettings:
    duration: float = 600.0
    workers: int = 2
    loss_every: float = 5.0  # seconds between recorded losses
    churn_every: float = 30.0  # seconds between verifier additions and removals
    kill_at: float | None = None  # seconds into the run (default: halfway)
    bound: float = 15.0  # freshness bound: commit to answer, seconds
    fault_window: float = 10.0  # errors this soon after the kill are the fault's
    sample_every: float = 10.0  # memory samples
    unary_threads: int = 3
    stream_batch: int = 50
    # Batches one CheckStream carries before the client opens a new one, as a verifier's
    # client must: the responder ends a stream at its --max-stream-batches (100,000 by
    # default), which a stream reached in about 250 s of the 600 s soak.
    stream_batches: int = 10_000

    def __post_init__(self) -> None:
        if self.duration < 10:
            raise ValueError("a soak lasts at least 10 seconds")
        if self.stream_batch < 1 or self.stream_batches < 1:
            raise ValueError("a stream carries at least one batch of at least one request")
        if min(self.loss_every, self.churn_every, self.bound, self.sample_every) <= 0:
            raise ValueError("intervals and the bound must be positive")

    @property
    def losses(self) -> int:
        """The losses the soak records: one every `loss_every` seconds of its run."""
        return int(self.duration // self.loss_every)


@dataclass
class Truth:
    """What each pool serial's status is, and when the soak's own changes were made."""

    base: dict[tuple[CertKind, int], Status]
    bound: float
    loss_began: dict[tuple[CertKind, int], float] = field(default_factory=dict)
    loss_acked: dict[tuple[CertKind, int], float] = field(default_factory=dict)
    unknown: set[tuple[CertKind, int]] = field(default_factory=set)  # not judged
    lock: threading.Lock = field(default_factory=threading.Lock)

    def judge(
        self, key: tuple[CertKind, int], got: Status, began: float, ended: float, ocsp: bool
    ) -> str:
        """ "ok" if an answer to a call made in [began, ended] may be true; "late" for GOOD
        after a loss acknowledged more than `bound` before the call (stale, not false when
        it was given); else "wrong". `ocsp`: in OCSP's words, which have only "unknown"
        for never issued, expired and not yet valid."""
        with self.lock:
            if key in self.unknown:
                return "ok"
            loss_began = self.loss_began.get(key)
            acked = self.loss_acked.get(key)
        expected = self.base[key]
        if ocsp and expected not in (Status.GOOD, Status.REVOKED):
            expected = Status.UNKNOWN
        if loss_began is None:
            return "ok" if got is expected else "wrong"
        if got is Status.REVOKED:
            return "ok" if ended >= loss_began else "wrong"
        if got is not Status.GOOD:
            return "wrong"
        # GOOD is fine while the loss is not yet known to be past the bound.
        return "ok" if acked is None or began < acked + self.bound else "late"


@dataclass
class Tally:
    calls: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    wrong_count: int = 0
    wrong_by_kind: dict[str, int] = field(default_factory=dict)
    fault_errors: int = 0
    unexpected_errors: dict[str, int] = field(default_factory=dict)
    # The first few messages of each unexpected error: a code alone does not say why.
    error_examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, interface: str, n: int = 1) -> None:
        with self.lock:
            self.calls[interface] = self.calls.get(interface, 0) + n

    def mistake(self, text: str) -> None:
        """Count a wrong answer; keep the first few of each kind (the text before ':')."""
        kind = text.split(":", 1)[0]
        with self.lock:
            self.wrong_count += 1
            self.wrong_by_kind[kind] = self.wrong_by_kind.get(kind, 0) + 1
            if self.wrong_by_kind[kind] <= 5:
                self.wrong.append(text)

    def error(
        self, what: str, at: float, kill: list[float], window: float, detail: str = ""
    ) -> None:
        with self.lock:
            if any(k <= at <= k + window for k in kill):
                self.fault_errors += 1
            else:
                self.unexpected_errors[what] = self.unexpected_errors.get(what, 0) + 1
                if detail and self.unexpected_errors[what] <= 5:
                    self.error_examples.append(f"{what}: {detail}"[:300])


def _pool(
    ds: DataSet,
    va: RunningVa,
    rng: random.Random,
    bound: float,
    needed: int,
    good: int = 2000,
) -> tuple[Truth, list[int]]:
    """The statuses of a sample of the pool as they stand now (`good` of its good
    certificates, 300 revoked and 300 unknown), and at least `needed` good CARD_AUTH
    serials the soak's own losses are drawn from (ValueError when the data set has too
    few left)."""
    pool = ds.pool()
    status = va.status_stub()
    sample = (
        rng.sample(pool.good, min(good, len(pool.good)))
        + rng.sample(pool.revoked, min(300, len(pool.revoked)))
        + rng.sample(pool.unknown, min(300, len(pool.unknown)))
    )
    base: dict[tuple[CertKind, int], Status] = {}

    def check(kind: CertKind, serial: int) -> Status:
        reply = status.Check(check_request(kind, serial), timeout=10)
        return Status(reply.status.status)

    for kind, serial in sample:
        base[(kind, serial)] = check(kind, serial)
    spare = [s for (k, s), st in base.items() if k is CertKind.CARD_AUTH and st is Status.GOOD]
    if len(spare) < needed:
        # The sample is the same draw every run, so earlier soaks lost its own good
        # CARD_AUTH certificates: the rest of the pool's, as they stand now.
        rest = [s for k, s in pool.good if k is CertKind.CARD_AUTH and (k, s) not in base]
        rng.shuffle(rest)
        for serial in rest:
            if len(spare) >= needed:
                break
            if check(CertKind.CARD_AUTH, serial) is Status.GOOD:
                base[(CertKind.CARD_AUTH, serial)] = Status.GOOD
                spare.append(serial)
    if len(spare) < needed:
        raise ValueError(
            f"the data set has {len(spare)} good CARD_AUTH certificates left to lose and the"
            f" soak records {needed} losses: rerun `jpki-va bench datagen --force`"
        )
    return Truth(base, bound), spare


def _private_mb(pid: int) -> float | None:
    try:
        return _kb_fields(Path("/proc") / str(pid) / "status", ("RssAnon",))["RssAnon"]
    except (OSError, KeyError):
        return None


def _slope(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope, MB per minute."""
    if len(series) < 3:
        return None
    n = len(series)
    mean_t = sum(t for t, _ in series) / n
    mean_v = sum(v for _, v in series) / n
    var = sum((t - mean_t) ** 2 for t, _ in series)
    if var == 0:
        return None
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in series) / var


class _Soak:
    def __init__(self, ds: DataSet, va: RunningVa, settings: SoakSettings) -> None:
        self.ds = ds
        self.va = va
        self.settings = settings
        self.rng = random.Random(7)
        self.truth, self.spare = _pool(ds, va, self.rng, settings.bound, settings.losses)
        self.keys = list(self.truth.base)
        self.tally = Tally()
        self.stop = threading.Event()
        self.kills: list[float] = []
        self.verifier_changes: list[tuple[float, bool]] = []  # (acknowledged at, present)
        self.watched: set[tuple[CertKind, int]] = set()
        self.memory: dict[int, list[tuple[float, float]]] = {}
        self.suspects: list[tuple[str, tuple[CertKind, int], Status, float, float]] = []
        self.late_answers = 0
        self.late_decisions = 0  # the throwaway verifier admitted or refused past the bound
        self.late_decision_by = 0.0
        self.late_by = 0.0  # the latest GOOD seen after a loss's acknowledgement, seconds
        self.issuers = _issuers(ds)
        self.started = time.monotonic()

    # -- helpers ---------------------------------------------------------------------
    def _error(self, what: str, exc: grpc.RpcError | None = None) -> None:
        detail = "" if exc is None else str(exc.details())
        self.tally.error(what, time.monotonic(), self.kills, self.settings.fault_window, detail)

    def _judge(self, interface: str, key: tuple[CertKind, int], got: Status, began: float) -> None:
        ended = time.monotonic()
        if self.truth.judge(key, got, began, ended, interface == "http_ocsp") != "ok":
            # Judged again at the end: a cascaded loss is known only once its reply is in.
            with self.tally.lock:
                if len(self.suspects) < 100_000:
                    self.suspects.append((interface, key, got, began, ended))

    def _verdicts(self) -> None:
        for interface, key, got, began, ended in self.suspects:
            verdict = self.truth.judge(key, got, began, ended, interface == "http_ocsp")
            if verdict == "late":
                acked = self.truth.loss_acked[key]
                self.late_answers += 1
                self.late_by = max(self.late_by, began - acked)
            elif verdict == "wrong":
                self.tally.mistake(
                    f"{interface}: {key[0].name} {key[1]:X} answered {got.name} at "
                    f"{began - self.started:.1f} s (truth {self.truth.base[key].name}, "
                    f"loss acknowledged at {self._rel(self.truth.loss_acked.get(key))})"
                )

    def _rel(self, when: float | None) -> str:
        return "-" if when is None else f"{when - self.started:.1f} s"

    def _loop(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stop.is_set():
                try:
                    body()
                except Exception as exc:
                    self._error(f"{type(exc).__name__}: {exc}"[:200])
                    self.stop.wait(0.5)

        return run

    # -- clients ---------------------------------------------------------------------
    def unary(self) -> Callable[[], None]:
        stub = self.va.status_stub()

        def once() -> None:
            key = self.rng.choice(self.keys)
            began = time.monotonic()
            try:
                reply = stub.Check(check_request(*key), timeout=10)
            except grpc.RpcError as exc:
                self._error(f"Check {exc.code().name}", exc)
                return
            self.tally.call("check")
            self._judge("check", key, Status(reply.status.status), began)

        return self._loop(once)

    def stream(self) -> Callable[[], None]:
        stub = self.va.status_stub()

        Sent = list[tuple[float, list[tuple[CertKind, int]]]]

        def batches(sent: Sent, room: threading.Semaphore) -> Iterator[va_pb2.CheckBatchRequest]:
            left = self.settings.stream_batches  # then the stream ends, every batch answered
            while left and not self.stop.is_set():
                if not room.acquire(timeout=1.0):  # a verifier's client: a few batches in flight
                    continue
                left -= 1
                batch = self.rng.sample(self.keys, self.settings.stream_batch)
                sent.append((time.monotonic(), batch))
                yield va_pb2.CheckBatchRequest(requests=[check_request(*k) for k in batch])

        def once() -> None:
            sent: Sent = []
            room = threading.Semaphore(4)
            try:
                replies = stub.CheckStream(batches(sent, room), timeout=self.settings.duration + 60)
                for reply in replies:
                    room.release()
                    began, batch = sent.pop(0)
                    for key, item in zip(batch, reply.results, strict=True):
                        if item.HasField("error"):
                            self.tally.mistake(f"stream: {key[1]:X} error {item.error}")
                            continue
                        self._judge("stream", key, Status(item.status.status), began)
                    self.tally.call("stream", len(batch))
            except grpc.RpcError as exc:
                self._error(f"CheckStream {exc.code().name}", exc)

        return self._loop(once)

    def http(self) -> Callable[[], None]:
        url = f"http://127.0.0.1:{self.va.responder.http_port}/"

        def once() -> None:
            kind, serial = key = self.rng.choice(self.keys)
            request = build_request(issuer=self.issuers[kind], serial=serial)
            began = time.monotonic()
            post = urllib.request.Request(
                url, data=request, headers={"Content-Type": "application/ocsp-request"}
            )
            try:
                with urllib.request.urlopen(post, timeout=10) as answer:  # noqa: S310 (loopback)
                    body = answer.read()
            except OSError as exc:
                self._error(f"HTTP OCSP {type(exc).__name__}")
                return
            self.tally.call("http_ocsp")
            parsed = ocsp.load_der_ocsp_response(body)
            if parsed.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                self.tally.mistake(f"http: {serial:X} {parsed.response_status.name}")
                return
            self._judge("http_ocsp", key, _OCSP_STATUS[parsed.certificate_status], began)

        return self._loop(once)

    def watch(self) -> Callable[[], None]:
        channel = grpc.insecure_channel(self.va.target)
        stub = crl_pb2_grpc.CrlServiceStub(channel)
        since = [0]

        def once() -> None:
            try:
                for update in stub.WatchRevocations(
                    crl_pb2.WatchRevocationsRequest(since=since[0]),
                    timeout=self.settings.duration + 60,
                ):
                    for event in update.events:
                        self.watched.add(
                            (CertKind(event.kind), int.from_bytes(event.serial, "big"))
                        )
                    since[0] = max(since[0], update.through)
                    self.tally.call("watch")
                    if self.stop.is_set():
                        return
            except grpc.RpcError as exc:
                if not self.stop.is_set():
                    self._error(f"WatchRevocations {exc.code().name}", exc)
                    time.sleep(0.5)

        return self._loop(once)

    # -- changes ---------------------------------------------------------------------
    def losses(self) -> Callable[[], None]:
        signer = self.va.signer_stub()

        def once() -> None:
            if self.stop.wait(self.settings.loss_every) or not self.spare:
                return
            serial = self.spare.pop()
            began = time.monotonic()
            with self.truth.lock:
                self.truth.loss_began[(CertKind.CARD_AUTH, serial)] = began
            try:
                reply = signer.RecordLoss(
                    signer_pb2.RecordLossRequest(
                        kind=va_pb2.CERT_KIND_CARD_AUTH,
                        serial=serial_to_bytes(serial),
                        cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
                    ),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # Lost already (an earlier run's last loss, not yet in the index it read):
                # out of the truth, since its answers may be either.
                with self.truth.lock:
                    del self.truth.loss_began[(CertKind.CARD_AUTH, serial)]
                    self.truth.unknown.add((CertKind.CARD_AUTH, serial))
                return
            acked = time.monotonic()
            # Every certificate that lost effect with it (a card's loss ends the holder's
            # smartphone certificate of that purpose too, 第16条の13).
            with self.truth.lock:
                for change in reply.changes:
                    key = (CertKind(change.kind), serial_from_bytes(change.serial))
                    self.truth.loss_began.setdefault(key, began)
                    self.truth.loss_acked[key] = acked

        return self._loop(once)

    def churn(self) -> Callable[[], None]:
        signer = self.va.signer_stub()
        stub = self.va.status_stub()
        present = [False]
        metadata = (("x-jpki-verifier", CHURN_VERIFIER),)
        # A signing certificate: the churned verifier holds the signing role (DESIGN §7).
        key = next(k for k in self.keys if k[0].is_signing)

        def once() -> None:
            if self.stop.wait(self.settings.churn_every / 10):
                return
            now = time.monotonic()
            last = self.verifier_changes[-1][0] if self.verifier_changes else self.started
            if now - last >= self.settings.churn_every:
                if present[0]:
                    signer.RemoveVerifier(
                        verifiers_pb2.RemoveVerifierRequest(id=CHURN_VERIFIER), timeout=30
                    )
                else:
                    signer.AddVerifier(
                        verifiers_pb2.AddVerifierRequest(
                            id=CHURN_VERIFIER,
                            roles=[int(Role.SIGNING_VERIFIER)],  # type: ignore[list-item]
                            client_certificate_der=[_throwaway_der()],
                            replace=True,  # one left by an earlier run is taken over
                        ),
                        timeout=30,
                    )
                present[0] = not present[0]
                self.verifier_changes.append((time.monotonic(), present[0]))
            began = time.monotonic()
            try:
                stub.Check(check_request(*key), timeout=10, metadata=metadata)
                admitted = True
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.PERMISSION_DENIED:
                    self._error(f"churn Check {exc.code().name}", exc)
                    return
                admitted = False
            self.tally.call("churn")
            if self.verifier_changes:
                changed_at, should = self.verifier_changes[-1]
                if admitted is not should and began > changed_at + self.settings.bound:
                    # The registry's change travels in the deltas, as a loss does: past
                    # the bound this decision is late, as a stale status is.
                    with self.tally.lock:
                        self.late_decisions += 1
                        self.late_decision_by = max(self.late_decision_by, began - changed_at)

        return self._loop(once)

    def chaos(self) -> Callable[[], None]:
        kill_at = self.settings.kill_at
        if kill_at is None:
            kill_at = self.settings.duration / 2

        def once() -> None:
            if self.kills or self.stop.wait(max(0.0, self.started + kill_at - time.monotonic())):
                self.stop.wait(1.0)
                return
            pids = self.va.responder.worker_pids
            if pids:
                self.kills.append(time.monotonic())
                os.kill(pids[0], signal.SIGKILL)

        return self._loop(once)

    def sampler(self) -> Callable[[], None]:
        def once() -> None:
            now = time.monotonic() - self.started
            for pid in self.va.responder.worker_pids:
                mb = _private_mb(pid)
                if mb is not None:
                    self.memory.setdefault(pid, []).append((now, mb))
            self.stop.wait(self.settings.sample_every)

        return self._loop(once)

    # -- run -------------------------------------------------------------------------
    def run(self, progress: Callable[[str], None]) -> dict[str, Any]:
        bodies = [self.unary() for _ in range(self.settings.unary_threads)]
        bodies += [self.stream(), self.watch(), self.losses(), self.churn()]
        bodies += [self.chaos(), self.sampler()]
        if self.va.responder.http_port is not None:
            bodies.append(self.http())
        threads = [threading.Thread(target=b, daemon=True) for b in bodies]
        for thread in threads:
            thread.start()
        end = self.started + self.settings.duration
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(30.0, left))
            progress(
                f"soak: {time.monotonic() - self.started:.0f} s, {sum(self.tally.calls.values())}"
                f" answers, {self.tally.wrong_count} wrong"
            )
        # Give the watch the bound to deliver the last losses, then stop everything.
        time.sleep(min(self.settings.bound, 5.0))
        self.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        return self.results()

    def results(self) -> dict[str, Any]:
        finished = time.monotonic()
        self._verdicts()
        due = [
            k for k, t in self.truth.loss_acked.items() if t + self.settings.bound < finished - 5
        ]
        missed = [k for k in due if k not in self.watched]
        for kind, serial in missed[:20]:
            self.tally.mistake(f"watch: {kind.name} {serial:X} lost but never delivered")
        self.tally.wrong_count += max(0, len(missed) - 20)
        # Each worker over the second half of its life: the first half fills its caches
        # and takes its share of the load (which moves when the other worker is killed).
        by_worker: dict[str, float | None] = {}
        for pid, series in self.memory.items():
            if len(series) >= 6:
                middle = (series[0][0] + series[-1][0]) / 2
                slope = _slope([(t, v) for t, v in series if t >= middle])
                by_worker[str(pid)] = None if slope is None else round(slope, 3)
        slopes = [s for s in by_worker.values() if s is not None]
        return {
            "settings": asdict(self.settings),
            "seconds": round(finished - self.started, 1),
            "answers": dict(self.tally.calls),
            "wrong_answers": self.tally.wrong_count,
            "wrong_by_kind": dict(self.tally.wrong_by_kind),
            "late_answers": self.late_answers,
            "latest_good_after_loss_seconds": round(self.late_by, 1),
            "late_verifier_decisions": self.late_decisions,
            "latest_verifier_decision_seconds": round(self.late_decision_by, 1),
            "wrong_examples": self.tally.wrong,
            "errors_at_faults": self.tally.fault_errors,
            "unexpected_errors": dict(self.tally.unexpected_errors),
            "unexpected_error_examples": list(self.tally.error_examples),
            "losses_recorded": len(self.truth.loss_acked),
            "losses_watched": len(set(self.truth.loss_acked) & self.watched),
            "verifier_changes": len(self.verifier_changes),
            "worker_kills": len(self.kills),
            "private_memory_mb": {
                str(pid): [round(v, 1) for _, v in series] for pid, series in self.memory.items()
            },
            "private_memory_slope_mb_per_min": max(slopes, key=abs) if slopes else None,
            "private_memory_slope_by_worker": by_worker,
            "private_memory_peak_mb": [
                round(max(v for _, v in s), 1) for s in self.memory.values() if s
            ],
            "private_memory_last_mb": [round(s[-1][1], 1) for s in self.memory.values() if s],
        }


def _throwaway_der() -> bytes:
    return throwaway_client_certificate(CHURN_VERIFIER, timedelta(days=1)).public_bytes(
        serialization.Encoding.DER
    )


def run_soak(
    ds: DataSet, settings: SoakSettings, progress: Callable[[str], None], **responder: Any
) -> dict[str, Any]:
    """`responder`: ResponderConfig fields other than the defaults (tests' limits)."""
    va = RunningVa(ds, settings.workers, **responder)
    try:
        va.start()
        progress("soak: reading the pool's statuses")
        soak = _Soak(ds, va, settings)
        return soak.run(progress)
    finally:
        va.close()
