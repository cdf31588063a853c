"""Restarting or freezing the shared services (RabbitMQ, PostgreSQL, Redis) of this machine, and
putting them back whatever happens.

A restart or a freeze disturbs every other user of the service, so before one the drill waits
until no other test or benchmark run is going (`wait_until_alone`), and each is paired with an
`ensure_*` that starts the service again if it is not answering. `*_pid` name the process a
freeze stops (with its descendants, `tests/chaos/freezing.py`).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from harness.isolation import Endpoints, answers
from harness.processes import ROOT

Say = Callable[[str], None]

OTHER_RUNS = "pytest|python -m bench"
"""What `pgrep -f` looks for: test and benchmark runs that a restart would disturb."""
ENSURE_SERVICES = ROOT / "scripts" / "ensure-services.sh"
"""Starts a service that does not answer, the same way `make services` and CI do."""


def _run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come back within {timeout_s:.0f}s")
        time.sleep(0.25)


# --- not disturbing anyone ----------------------------------------------------------------------


def _own_tree() -> set[int]:
    """This process, its ancestors and its descendants."""
    parent: dict[int, int] = {}
    for line in _run("ps", "-eo", "pid=,ppid=").stdout.splitlines():
        pid, _, ppid = line.strip().partition(" ")
        parent[int(pid)] = int(ppid.strip())
    mine = {os.getpid()}
    pid = os.getpid()
    while pid in parent and parent[pid] > 1:
        pid = parent[pid]
        mine.add(pid)
    grew = True
    while grew:
        children = {p for p, pp in parent.items() if pp in mine and p not in mine}
        mine |= children
        grew = bool(children)
    return mine


def other_runs() -> list[str]:
    """Test and benchmark processes of other people on this machine ('pid command')."""
    mine = _own_tree()
    found = []
    for line in _run("pgrep", "-af", OTHER_RUNS).stdout.splitlines():
        pid, _, command = line.partition(" ")
        if pid.isdigit() and int(pid) not in mine:
            found.append(f"{pid} {command[:120]}")
    return found


def wait_until_alone(say: Say, what: str, timeout_s: float = 600) -> bool:
    """Wait until no other test or benchmark run is going; False if one still is after
    `timeout_s` (the caller then skips what would disturb it)."""
    deadline = time.monotonic() + timeout_s
    announced = 0.0
    while True:
        others = other_runs()
        if not others:
            return True
        now = time.monotonic()
        if now > deadline:
            say(f"  still not alone after {timeout_s:.0f}s; not disturbing {what}")
            return False
        if now - announced >= 30:
            say(
                f"  waiting (up to {deadline - now:.0f}s more) for {len(others)} other test or"
                f" benchmark processes to finish before disturbing {what}: " + "; ".join(others[:3])
            )
            announced = now
        time.sleep(5)


# --- RabbitMQ -----------------------------------------------------------------------------------


def rabbitmq_ready(services: Endpoints) -> bool:
    if _run("rabbitmq-diagnostics", "-q", "ping", timeout=30).returncode != 0:
        return False
    if not answers(services.amqp_host, services.amqp_port):
        return False
    try:
        services.management("GET", "/overview")
    except (urllib.error.URLError, OSError):
        return False
    return True


def rabbitmq_pid(services: Endpoints) -> int:
    """The Erlang VM of the node behind the management API, checked to be the one listening on
    the AMQP port. Asked over HTTP: a CLI tool boots a VM of its own, seconds under load."""
    overview = services.management("GET", "/overview")
    ports = {listener["port"] for listener in overview["listeners"]}
    if services.amqp_port not in ports:
        raise RuntimeError(f"RabbitMQ node {overview['node']} listens on {ports}, not on AMQP's")
    node = services.management("GET", "/nodes/" + urllib.parse.quote(overview["node"], safe=""))
    return int(node["os_pid"])


def restart_rabbitmq(services: Endpoints) -> None:
    """Stop the RabbitMQ application (every connection drops) and start it again."""
    try:
        _run("rabbitmqctl", "stop_app")
        _run("rabbitmqctl", "start_app")
        _wait(lambda: rabbitmq_ready(services), 120, "RabbitMQ")
    finally:
        ensure_rabbitmq(services)


def ensure_rabbitmq(services: Endpoints) -> None:
    """Start RabbitMQ if it is not answering: its application, else the whole node."""
    if rabbitmq_ready(services):
        return
    _run("rabbitmqctl", "start_app")
    try:
        _wait(lambda: rabbitmq_ready(services), 60, "RabbitMQ")
    except RuntimeError:
        _ensure("rabbitmq")
        _wait(lambda: rabbitmq_ready(services), 180, "RabbitMQ")


def _ensure(service: str) -> None:
    _run("bash", str(ENSURE_SERVICES), service, timeout=300)


def vhost_connections(vhost: str) -> int:
    """AMQP connections to `vhost` as the broker knows them right now."""
    listed = _run("rabbitmqctl", "list_connections", "-q", "--no-table-headers", "vhost").stdout
    return sum(1 for line in listed.splitlines() if line.strip() == vhost)


def wait_until_listed(services: Endpoints, vhost: str, timeout_s: float = 20) -> None:
    """Wait until the management API lists every connection of `vhost` (its list lags the
    broker by up to its statistics interval)."""
    path = f"/vhosts/{urllib.parse.quote(vhost, safe='')}/connections"
    expected = vhost_connections(vhost)
    _wait(
        lambda: len(services.management("GET", path)) >= expected,
        timeout_s,
        "the management API's list of connections",
    )


def close_connections(services: Endpoints, vhost: str) -> int:
    """Close every AMQP connection of `vhost` from the management API; how many."""
    path = f"/vhosts/{urllib.parse.quote(vhost, safe='')}/connections"
    connections = services.management("GET", path)
    for connection in connections:
        name = urllib.parse.quote(connection["name"], safe="")
        services.management("DELETE", f"/connections/{name}")
    return len(connections)


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_cluster() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    return versions[-1]


def _pg_ctl(action: str) -> subprocess.CompletedProcess[str]:
    return _run("pg_ctlcluster", "--skip-systemctl-redirect", _pg_cluster(), "main", action)


_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
"""The protocol's SSLRequest: every server answers it with one byte, before any login."""


def postgres_ready(services: Endpoints) -> bool:
    """The server itself answers, not only the kernel: a frozen postmaster's socket still
    accepts connections."""
    try:
        with socket.create_connection((services.pg_host, services.pg_port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(_SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def postmaster_pid(services: Endpoints) -> int:
    """The postmaster of the cluster on `services.pg_port`, from its data directory's
    postmaster.pid (line 1 the pid, line 4 the port)."""
    for line in _run("pg_lsclusters", "--no-header").stdout.splitlines():
        _version, _name, port, _status, _owner, data, *_ = line.split()
        if int(port) != services.pg_port:
            continue
        lines = (Path(data) / "postmaster.pid").read_text().splitlines()
        if int(lines[3]) != services.pg_port:
            raise RuntimeError(f"{data}/postmaster.pid names port {lines[3]}")
        return int(lines[0])
    raise RuntimeError(f"no PostgreSQL cluster on port {services.pg_port}")


def restart_postgres(services: Endpoints, down_s: float = 2.0) -> None:
    """Stop PostgreSQL (every session ends), stay down `down_s`, start it again."""
    try:
        _pg_ctl("stop")
        time.sleep(down_s)
        _ensure("postgres")
        _wait(lambda: postgres_ready(services), 60, "PostgreSQL")
    finally:
        ensure_postgres(services)


def ensure_postgres(services: Endpoints) -> None:
    if not postgres_ready(services):
        _ensure("postgres")
        _wait(lambda: postgres_ready(services), 60, "PostgreSQL")


# --- Redis --------------------------------------------------------------------------------------


def redis_ready(services: Endpoints) -> bool:
    result = _run("redis-cli", "-h", services.redis_host, "-p", str(services.redis_port), "ping")
    return result.stdout.strip() == "PONG"


def redis_pid(services: Endpoints) -> int:
    """The redis-server on `services.redis_port`, as it tells itself."""
    info = _run(
        "redis-cli", "-h", services.redis_host, "-p", str(services.redis_port), "info", "server"
    ).stdout
    fields: dict[str, str] = {}
    for line in info.splitlines():
        name, _, value = line.strip().partition(":")
        fields[name] = value
    if fields.get("tcp_port") != str(services.redis_port) or "process_id" not in fields:
        raise RuntimeError(f"redis-cli info server did not name the server: {info[:300]!r}")
    return int(fields["process_id"])


def restart_redis(services: Endpoints, down_s: float = 2.0) -> None:
    """Shut Redis down without saving (its data is gone), stay down `down_s`, start it."""
    try:
        _run(
            "redis-cli",
            "-h",
            services.redis_host,
            "-p",
            str(services.redis_port),
            "shutdown",
            "nosave",
        )
        time.sleep(down_s)
        _ensure("redis")
        _wait(lambda: redis_ready(services), 30, "Redis")
    finally:
        ensure_redis(services)


def ensure_redis(services: Endpoints) -> None:
    if not redis_ready(services):
        _ensure("redis")
        _wait(lambda: redis_ready(services), 30, "Redis")


def ensure_all(services: Endpoints) -> None:
    """Every shared service answering again (the last line of defence of a drill)."""
    ensure_postgres(services)
    ensure_redis(services)
    ensure_rabbitmq(services)
