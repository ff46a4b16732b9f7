"""The transport ceiling: StatusService answering canned messages, nothing else.

Same messages (the generated servicer base, so requests are parsed as jpki-va's
are), the same gRPC server (threads, SO_REUSEPORT) and the same number of worker
processes as the responder; no index, no interceptor, no domain. How fast
jpki-va could possibly answer on this machine with this transport: in plaintext, or
over the same mTLS as a responder given the same `TlsFiles`.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import grpc

from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.app.config import TlsFiles
from jpki_va.server.app.signals import stop_on_signals
from jpki_va.server.rpc.identity import server_credentials


class TrivialServicer(va_pb2_grpc.StatusServiceServicer):
    def __init__(self, check: bytes, ocsp_der: bytes) -> None:
        self._check = va_pb2.CheckResponse.FromString(check)
        self._result = va_pb2.CheckResult(status=self._check.status)
        self._ocsp = va_pb2.OcspResponse(der=ocsp_der)

    def Check(self, request: va_pb2.CheckRequest, context: grpc.ServicerContext) -> Any:
        return self._check

    def CheckStream(
        self, request_iterator: Iterator[va_pb2.CheckBatchRequest], context: grpc.ServicerContext
    ) -> Iterator[va_pb2.CheckBatchResponse]:
        for batch in request_iterator:
            yield va_pb2.CheckBatchResponse(results=[self._result] * len(batch.requests))

    def Ocsp(self, request: va_pb2.OcspRequest, context: grpc.ServicerContext) -> Any:
        return self._ocsp

    def ListIssuers(
        self, request: va_pb2.ListIssuersRequest, context: grpc.ServicerContext
    ) -> va_pb2.ListIssuersResponse:
        return va_pb2.ListIssuersResponse()


def _worker(
    port: int,
    threads: int,
    check: bytes,
    ocsp_der: bytes,
    tls: TlsFiles | None,
    ready: Any,
    stop: ProcessEvent,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_on_signals(stop, (signal.SIGTERM,))  # set by a thread: no lock in the handler
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads), options=[("grpc.so_reuseport", 1)]
    )
    va_pb2_grpc.add_StatusServiceServicer_to_server(TrivialServicer(check, ocsp_der), server)
    address = f"127.0.0.1:{port}"
    if tls is None:
        server.add_insecure_port(address)
    else:  # the responder's own credentials function: the same TLS, handshake and all
        server.add_secure_port(address, server_credentials(*tls.read()))
    server.start()
    ready.put(port)
    stop.wait()
    server.stop(1).wait()


@dataclass
class TrivialServer:
    """Worker processes serving one loopback port (the ladder's rungs are these too)."""

    port: int
    processes: list[multiprocessing.process.BaseProcess]
    _stop: ProcessEvent

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        for proc in self.processes:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def start_trivial(
    workers: int, threads: int, check: bytes, ocsp_der: bytes, tls: TlsFiles | None = None
) -> TrivialServer:
    """Start `workers` processes on one free loopback port; returns when all listen.

    With `tls`, the port speaks only mTLS, as a responder with a client CA does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    stop = ctx.Event()
    procs: list[multiprocessing.process.BaseProcess] = [
        ctx.Process(
            target=_worker,
            args=(port, threads, check, ocsp_der, tls, ready, stop),
            name="bench-trivial",
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    return TrivialServer(port, procs, stop)
