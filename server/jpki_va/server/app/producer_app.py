"""The replica's OCSP producer process: wires the index, the delegated key and the
store of pre-produced responses to a Producer (responder/ocsp_producer.py).

A process of its own, at a lower scheduling priority (nice), so the workers' answers
come first; the Producer also bounds its own share of one CPU. The supervisor
(app/responder_app.py) starts it after the workers and starts another if it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import lmdb

from jpki_va.core.clock import SystemClock
from jpki_va.server.app.config import ResponderConfig
from jpki_va.server.app.lifeline import ParentGone, tie_to_parent
from jpki_va.server.app.logs import configure
from jpki_va.server.app.signals import stop_on_signals
from jpki_va.server.responder.metrics import ProducerMetrics
from jpki_va.server.responder.ocsp import OcspResponder
from jpki_va.server.responder.ocsp_keys import OcspKeyStore
from jpki_va.server.responder.ocsp_producer import Producer
from jpki_va.server.responder.preproduced import PreproducedStore
from jpki_va.server.responder.status import (
    IndexHolder,
    IndexStatusSource,
    IssuerCompromiseSource,
    Resolver,
)

log = logging.getLogger(__name__)

NICENESS = 10  # below the workers: pre-production waits while answers are due
METRICS_SECONDS = 1.0


def producer_main(config: ResponderConfig) -> None:
    stop = threading.Event()
    os.umask(0o077)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    stop_on_signals(stop, (signal.SIGTERM,))
    configure("responder-producer")
    try:
        tie_to_parent(stop.set, deadline=config.grace_seconds)
    except ParentGone as exc:
        log.warning("%s; not producing", exc)
        return
    os.nice(NICENESS)
    clock = SystemClock()
    holder = IndexHolder(config.index_dir)
    keystore = OcspKeyStore(config.ocsp_dir)
    store = PreproducedStore(config.state_dir)
    source = IssuerCompromiseSource(IndexStatusSource(holder), holder)
    responder = OcspResponder(source, Resolver(holder), keystore.current, clock)
    metrics = ProducerMetrics()
    producer = Producer(
        holder,
        responder,
        store,
        clock,
        share=config.ocsp_preproduce_share,
        sweep=config.ocsp_preproduce_sweep,
        batch=config.ocsp_preproduce_batch,
        counted=metrics.counted,
    )
    reported = 0.0
    rest = 0.0
    while not stop.wait(rest):
        holder.refresh()
        try:
            rest = producer.step()
        except lmdb.Error as exc:
            # A full disk or a store in trouble: serving goes on, signing live.
            log.warning("cannot pre-produce OCSP responses now: %s", exc)
            rest = 5.0
        now = clock.now().timestamp()
        if now - reported >= METRICS_SECONDS:
            reported = now
            done = producer.current
            seconds = None if done is None or not done.done else done.finished - done.started
            metrics.flush(seconds, *store.stat())
    store.close()
    holder.close()
