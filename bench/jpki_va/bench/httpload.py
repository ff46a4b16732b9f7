"""HTTP OCSP load with wrk: the same client and the same requests for every target.

wrk (C, event loop) is far cheaper per request than any Python client, so on two
shared cores the servers, not the client, set the figures. A Lua script POSTs the
DER requests of requests.hex in turn (each wrk thread from its own offset) and
writes wrk's own summary as JSON. wrk is closed-loop only (`connections` in
flight); it counts non-2xx answers and socket failures as errors.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from jpki_va.bench.loadgen import LoadResult, cpu_seconds

WRK_SCRIPT = r"""
local bodies = {}
local n = 0
local i = 0
local path = "/"

function setup(thread)
  thread:set("offset", thread_count or 0)
  thread_count = (thread_count or 0) + 997
end

function init(args)
  path = args[2] or "/"
  for line in io.lines(args[1]) do
    if #line > 0 then
      n = n + 1
      bodies[n] = (line:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
    end
  end
  i = offset or 0
end

function request()
  i = i + 1
  local body = bodies[(i % n) + 1]
  return wrk.format("POST", path,
    {["Content-Type"] = "application/ocsp-request"}, body)
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("WRK_JSON_OUT"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
  out:close()
end
"""


class HttpLoadError(Exception):
    pass


@dataclass(frozen=True)
class HttpSpec:
    duration: int = 5  # whole seconds (wrk)
    threads: int = 2
    connections: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.duration <= 3600:
            raise ValueError("HTTP load duration must be 1..3600 whole seconds")
        if self.threads < 1 or self.connections < self.threads:
            raise ValueError("need threads >= 1 and connections >= threads")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_command(url: str, spec: HttpSpec, script: Path, requests: Path) -> list[str]:
    return [
        "wrk",
        "-t",
        str(spec.threads),
        "-c",
        str(spec.connections),
        "-d",
        f"{spec.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(requests),
        "/",
    ]


def run_wrk(
    label: str,
    url: str,
    spec: HttpSpec,
    requests: Path,
    *,
    wrap: Sequence[str] = (),
    setup_shell: str = "",
    server_pids: Sequence[int] = (),
) -> LoadResult:
    """Load `url` with wrk; `wrap`/`setup_shell` run it inside another context (a netns).

    With `setup_shell`, wrk runs in `bash -c` after that shell fragment (which starts
    the server and defines a `cleanup` function called when wrk is done).
    """
    if wrk_path() is None:
        raise HttpLoadError("wrk is not installed (jpki-va bench setup)")
    host = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"HTTP load goes to loopback only, not {url!r}")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "ocsp.lua"
        script.write_text(WRK_SCRIPT)
        out = Path(tmp) / "wrk.json"
        command = wrk_command(url, spec, script, requests)
        if setup_shell:
            shell = (
                f"set -e\n{setup_shell}\ntrap cleanup EXIT\n"
                f"WRK_JSON_OUT={shlex.quote(str(out))} {shlex.join(command)} >/dev/null\n"
            )
            argv = [*wrap, "bash", "-c", shell]
            env_out = None
        else:
            argv = [*wrap, *command]
            env_out = {"WRK_JSON_OUT": str(out)}
        import os  # noqa: PLC0415

        env = {**os.environ, **(env_out or {})}
        before = cpu_seconds(server_pids)
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=spec.duration + 120, env=env, check=False
        )
        after = cpu_seconds(server_pids)
        if proc.returncode != 0 or not out.exists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise HttpLoadError(
                f"wrk against {label} failed ({proc.returncode}): {' | '.join(detail)}"
            )
        data = json.loads(out.read_text())
    seconds = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    return LoadResult(
        label=label,
        spec={"url": url, **asdict(spec), "client": "wrk"},
        calls=int(data["requests"]),
        items=int(data["requests"]),
        errors=errors,
        dropped=0,
        seconds=seconds,
        latency_ms={k: round(data[k] / 1000.0, 3) for k in ("p50", "p90", "p99", "max")},
        statuses={},
        client_cpu_seconds=0.0,
        server_cpu_seconds=round(after - before, 2) if server_pids else None,
        extra={"bytes": int(data["bytes"])},
    )
