"""The warm stage host (modelshelf.pipeline.warm): real ``shelf``/``dvc`` processes, real hosts.

Each test has its own socket directory ($SHELF_WARM_DIR), so it starts its own host, and stops
it at the end.  Waiting is polling with a deadline, never a sleep that times something.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, copy_tree
from modelshelf.pipeline import warm

pytestmark = pytest.mark.skipif(os.name != "posix" or not hasattr(socket, "send_fds"),
                                reason="the warm host needs POSIX and SCM_RIGHTS")

DEADLINE = 90.0  # seconds: a host imports scikit-learn, pandas and skl2onnx first
TRAIN_FIFO = ("train", "--params", "params.fifo", "--prepared", "data/prepared", "--out", "build/x")


def until(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if result := check():
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


@pytest.fixture
def warm_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private socket directory for this test's hosts (short: a socket path has ~100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="shelfw-", dir="/tmp"))
    monkeypatch.setenv("SHELF_WARM_DIR", str(d))
    monkeypatch.delenv("SHELF_WARM", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("SHELF_WARM_IDLE", "120")  # the fixture stops them; a loaded machine is slow
    yield d
    pids = warm.stop(str(d))
    until("the hosts to exit", lambda: not any(alive(pid) for pid in pids), 30)
    shutil.rmtree(d, ignore_errors=True)


def host(d: Path, exclude: tuple[int, ...] = ()) -> dict[str, Any]:
    """Wait for a host (not one of ``exclude``) in ``d`` to answer; it answers once its imports are done."""
    return until("a warm host", lambda: next((h for h in warm.hosts(str(d)) if h["pid"] not in exclude), None))


def start_host(p: Project, d: Path, exclude: tuple[int, ...] = ()) -> dict[str, Any]:
    """Start a host the way a stage command does (``--help`` of one runs cold meanwhile)."""
    p.shelf("gate", "--help")
    return host(d, exclude)


def children_run(d: Path, words: str) -> int:
    """How many warm children ran a command containing ``words`` (the hosts' logs)."""
    return sum(log.read_text().count(f": {words}") for log in d.glob("*.log"))


def cold(p: Project, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=p.root, capture_output=True, text=True, check=check,
                          env={**os.environ, "SHELF_WARM": "0"})


def blocked_stage(p: Project) -> tuple[subprocess.Popen[str], int, int]:
    """``shelf train`` whose params file is a FIFO: it blocks reading it until we say.

    Returns the client process, the warm child's pid and our writing end of the FIFO.
    """
    fifo = p.root / "params.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    client = subprocess.Popen(["shelf", *TRAIN_FIFO], cwd=p.root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def writer() -> int | None:
        try:  # succeeds once a reader has the FIFO open: the stage is inside load_params
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return None

    fd = until("the stage to open its params", writer)
    # The forked child may open the FIFO before its host has noted it: ask until it has.
    children = until("the host to list its child", lambda: host(Path(os.environ["SHELF_WARM_DIR"]))["children"])
    assert len(children) == 1, children
    return client, children[0], fd


def dvc_lines(out: str) -> list[str]:
    """``dvc repro``'s output, its ``git add`` hint in a fixed order (DVC lists a set)."""
    return [" ".join(sorted(line.split())) if line.startswith("\tgit add ") else line for line in out.splitlines()]


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!cI", kind, len(payload)) + payload


# -- the tests ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dvc_repro_warm_is_byte_identical_to_cold(project: Project, tmp_path: Path, warm_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # skl2onnx orders the ONNX copy's opset_import by iterating a set of (domain, version)
    # tuples: its bytes follow the string hash seed, cold or warm.  One seed for both runs.
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    warm_p = Project(copy_tree(project.root, tmp_path / "warm-proj"))
    cold_run = cold(project, "dvc", "repro")
    start_host(warm_p, warm_dir)
    warm_run = warm_p.dvc("repro")
    for stage in ("prepare", "train", "evaluate", "gate", "serialise"):
        assert children_run(warm_dir, f"{stage} --") == 1, stage
    assert dvc_lines(warm_run.stdout) == dvc_lines(cold_run.stdout)
    files = ["models/model.joblib", "metrics/eval.json", "metrics/gate.json", "metrics/verdict.json",
             "data/profile.json", "build/candidate/model.joblib"]
    for d in ("metrics/plots", "models/onnx", "data/prepared"):
        files += [f"{d}/{f.name}" for f in (project.root / d).iterdir()]
    for rel in files:
        assert (warm_p.root / rel).read_bytes() == (project.root / rel).read_bytes(), rel

    def untimed(p: Project, rel: str) -> dict[str, Any]:
        data = p.json(rel)
        for stamp in ("trained_at", "serialised_at"):
            data.pop(stamp, None)
        return data

    for rel in ("models/card.json", "build/candidate/candidate.json"):  # so dvc.lock differs in their md5 only
        assert untimed(warm_p, rel) == untimed(project, rel), rel


def test_a_failing_gate_fails_alike_warm_and_cold(built: Project, warm_dir: Path) -> None:
    start_host(built, warm_dir)
    built.set_params(gate={"thresholds": {"accuracy": 0.9999}})
    cold_run = cold(built, "shelf", "gate", check=False)
    cold_report = (built.root / "metrics" / "gate.json").read_bytes()
    warm_run = built.shelf("gate", check=False)
    assert children_run(warm_dir, "gate") == 1
    assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == \
        (cold_run.returncode, cold_run.stdout, cold_run.stderr)
    assert warm_run.returncode == 3
    assert warm_run.stderr.startswith("shelf: error: ") and "did not clear the gate" in warm_run.stderr
    assert (built.root / "metrics" / "gate.json").read_bytes() == cold_report


def test_kill_9_of_a_client_kills_its_child_and_sigint_is_forwarded(project: Project, warm_dir: Path) -> None:
    start_host(project, warm_dir)

    client, child, fd = blocked_stage(project)
    assert alive(child)
    client.kill()
    client.wait()
    until("the orphaned child to die", lambda: not alive(child), 30)
    os.close(fd)
    assert any("killed by signal 9" in log.read_text() for log in warm_dir.glob("*.log"))
    assert not host(warm_dir)["children"]

    client, child, fd = blocked_stage(project)
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=30)
    os.close(fd)
    assert (client.returncode, out, err) == (130, "", "shelf: interrupted\n")
    until("the child to be reaped", lambda: not alive(child), 30)


def test_kill_9_of_the_host_the_next_command_runs_cold_and_a_new_host_comes_up(
        project: Project, warm_dir: Path) -> None:
    first = start_host(project, warm_dir)
    os.kill(first["pid"], signal.SIGKILL)
    until("the host to die", lambda: not alive(first["pid"]), 30)
    assert Path(first["socket"]).exists()  # stale: nobody listens
    done = project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/prepared",
                         "--profile", "data/profile.json")
    assert done.stdout.startswith("prepare: builtin:breast_cancer: 569 rows")
    assert children_run(warm_dir, "prepare") == 0  # it ran in its own process
    second = host(warm_dir, exclude=(first["pid"],))
    assert second["key"] == first["key"] and second["socket"] == first["socket"]
    again = project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/prepared",
                          "--profile", "data/profile.json")
    assert again.stdout == done.stdout and children_run(warm_dir, "prepare") == 1


def test_a_changed_source_file_or_installed_package_gets_a_new_host(
        project: Project, warm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"  # a directory on sys.path, standing in for site-packages
    site.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(site))
    first = start_host(project, warm_dir)

    source = Path(warm.__file__).parent / "__init__.py"
    st = source.stat()
    try:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        second = start_host(project, warm_dir, exclude=(first["pid"],))
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert second["key"] != first["key"]

    (site / "newpkg.py").write_text("")  # an install: the directory's mtime changes
    third = start_host(project, warm_dir, exclude=(first["pid"], second["pid"]))
    assert third["key"] not in (first["key"], second["key"])


def run_in_pty(cmd: list[str], cwd: Path, columns: int, env: dict[str, str]) -> str:
    """``cmd``'s stdout on a terminal ``columns`` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every copy of the terminal's slave side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_the_childs_stdout_follows_the_clients_fds(project: Project, warm_dir: Path) -> None:
    """argparse sizes help to the terminal of sys.stdout: a pipe gives 80 columns, a pty its own."""
    start_host(project, warm_dir)
    piped, piped_cold = project.shelf("train", "--help").stdout, cold(project, "shelf", "train", "--help").stdout
    assert piped == piped_cold and max(len(line) for line in piped.splitlines()) > 48
    env = dict(os.environ)
    on_tty = run_in_pty(["shelf", "train", "--help"], project.root, 50, env)
    on_tty_cold = run_in_pty(["shelf", "train", "--help"], project.root, 50, {**env, "SHELF_WARM": "0"})
    assert on_tty == on_tty_cold != piped
    assert max(len(line) for line in on_tty.splitlines()) <= 48
    assert children_run(warm_dir, "train --help") == 2


def as_uid(uid: int, action: Callable[[], int]) -> int:
    """Run ``action`` in a forked process as ``uid``; its return value is the exit status."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = action()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_another_uid_cannot_use_the_host(project: Project, warm_dir: Path) -> None:
    info = start_host(project, warm_dir)
    path = info["socket"]

    def connect_and_ping() -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except PermissionError:
                return 13
            s.settimeout(10)
            try:
                s.sendall(frame(b"R", json.dumps({"op": "ping"}).encode()))
                answer = s.recv(1)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
            return 0 if answer == b"" else 1  # 0: the host hung up without an answer

    if os.getuid() == 0:
        nobody = 65534
        assert as_uid(nobody, connect_and_ping) == 13  # the directory is 0700
        os.chmod(warm_dir, 0o711)
        os.chmod(path, 0o777)
        try:
            assert as_uid(nobody, connect_and_ping) == 0  # SO_PEERCRED: another uid is refused
        finally:
            os.chmod(path, 0o700)
        assert any(f"refused a connection from uid {nobody}" in log.read_text() for log in warm_dir.glob("*.log"))
    else:
        os.chmod(warm_dir, 0o711)
    # A client refuses a directory others can enter: one line, and the command runs cold.
    done = project.shelf("train", "--help")
    assert done.stderr == (f"shelf: warning: not using a warm stage host: {warm_dir} is not private "
                           "(mode 0711, want 0700) (SHELF_WARM=0 turns it off)\n")
    assert done.stdout.startswith("usage: shelf train") and children_run(warm_dir, "train --help") == 0
    os.chmod(warm_dir, 0o700)
    with pytest.raises(warm.Unavailable, match="owned by uid"):
        if os.getuid() == 0:
            os.chown(warm_dir, 65534, -1)
        else:
            pytest.skip("cannot give a directory away without root")
        try:
            warm.private_dir(str(warm_dir))
        finally:
            os.chown(warm_dir, 0, -1)


def test_a_host_starts_with_the_commands_interpreter_options() -> None:
    assert warm.interpreter_options(["python", "/venv/bin/shelf", "train", "-O"]) == []
    assert warm.interpreter_options(["python", "-X", "dev", "-Werror", "-O", "-m", "modelshelf", "train"]) == [
        "-X", "dev", "-Werror", "-O"]
    assert warm.interpreter_options(["python", "-I", "-W", "ignore", "-c", "code", "-X"]) == ["-I", "-W", "ignore"]
    assert warm.interpreter_options(["python", "-", "-O"]) == []


def test_the_watchdog_waits_for_its_client_whatever_the_shared_fd_flag_says() -> None:
    """A forked child's connection shares its open file description, and so O_NONBLOCK, with the
    host's copy.  The host once set its timeout after the fork: a child that had switched to
    blocking reads then saw EAGAIN, took it for a lost client, and SIGKILLed itself mid-stage
    (``shelf prepare ... exited with -9`` under ``dvc repro`` in CI)."""
    child_end, client_end = socket.socketpair()
    with child_end, client_end:
        child_end.settimeout(30.0)  # as the child leaves it after G
        os.set_blocking(child_end.fileno(), False)  # as another process's settimeout leaves the flag
        relayed: list[int] = []
        done = threading.Event()
        watchdog = threading.Thread(target=lambda: (warm._await_client(child_end, b"", relayed.append), done.set()),
                                    daemon=True)
        watchdog.start()
        assert not done.wait(0.5), "the watchdog gave up on a client that is still connected"
        client_end.sendall(frame(b"S", bytes([signal.SIGTERM])))
        until("the relayed signal", lambda: relayed)
        assert not done.is_set()
        client_end.shutdown(socket.SHUT_WR)
        assert done.wait(DEADLINE)
        assert relayed == [signal.SIGTERM]
