"""Real Rapport servers in child processes, and a TCP proxy that can cut the database away.

Servers run `python -m app.cli serve` from this interpreter (so CI's venv is used) on free
loopback ports, in a session of their own so a kill reaches uvicorn's workers too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ADMIN = "test-admin-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(url: str, **settings: Any) -> dict[str, str]:
    """The environment of a server or CLI command on `url`: the bootstrap admin key, no
    rate limit (the tests hammer with one key), no in-process webhook delivery unless asked."""
    env = {**os.environ, "RAPPORT_DATABASE_URL": url, "RAPPORT_BOOTSTRAP_KEY": ADMIN, "RAPPORT_RATE_LIMIT_PER_SECOND": "0", "RAPPORT_DELIVER_IN_PROCESS": "false"}
    env.update({f"RAPPORT_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a `rapport` command against `url` as an operator would."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=server_env(url), capture_output=True, text=True, timeout=120)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server was not ready within {timeout} s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL the server and every worker it started."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class Servers:
    """Starts servers; `kill_all` (the fixture's teardown) leaves none behind."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[Server] = []

    def start(self, url: str, *, workers: int = 1, ready: bool = True, shutdown_timeout: int = 20, **settings: Any) -> Server:
        port = free_port()
        log = self.logs / f"server-{len(self.started)}-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers), "--shutdown-timeout", str(shutdown_timeout)],
                env=server_env(url, **settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(proc, port, log)
        self.started.append(server)
        if ready:
            server.wait_ready()
        return server

    def kill_all(self) -> None:
        for server in self.started:
            server.kill()


class TcpProxy:
    """Forwards a loopback port to `target`. `cut()` drops every connection and refuses new
    ones (the database is gone); `restore()` accepts again on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._listener: threading.Thread | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listening.set()
        self._listener = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._listener.start()

    def cut(self) -> None:
        self._listening.clear()
        if self._listener is not None:
            self._listener.join(timeout=5)  # the listening socket is closed: connecting is refused
        with self._lock:
            dropped, self._connections = self._connections, set()
        for sock in dropped:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._listening.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _close(client)
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._connections |= {client, upstream}
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side went away: so does the other, as with a real network cut
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
