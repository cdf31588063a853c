"""A throw-away Redis primary, its replicas and three Sentinels on this machine.

For the tests and drills that need a failover: `SentinelGroup.started()` starts every server on
ports of its own (free ones the kernel hands out, far from 6379 and 26379, so two runs side by
side never collide), each with a directory of its own and no persistence, waits until the
replicas are in sync and the Sentinels know each other and every replica, and stops and removes
everything on the way out, failure included. The servers die with the process that started
them even if it is killed (`PR_SET_PDEATHSIG`).

`kill_primary()` SIGKILLs the primary and returns once the Sentinels name another one and it
answers as a primary. `REDIS_URL` for the system is `group.url(db)`.

Asynchronous replication loses what the promoted replica had not applied when the primary
died; on one machine that is rarely more than nothing. `hold_replication(replica)` makes it
certain: the replica stops applying the primary's stream (`CLIENT PAUSE WRITE`, which Redis 7
applies to the replication link too) while it answers reads and Sentinel's pings as usual;
`kill_primary()` releases it right after the kill, when the stream it held back is gone with
the link. The first replica has the lowest `replica-priority`, so it is the one promoted.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness.processes import die_with_parent, free_port, wait_for

SERVICE = "drill"
"""The Sentinel service name of the group's primary."""
DOWN_AFTER_MS = 1000
"""How long a primary must not answer before a Sentinel calls it down."""
FAILOVER_TIMEOUT_MS = 5000
START_TIMEOUT_S = 20.0
FAILOVER_WAIT_S = 30.0
HOLD_LIMIT_MS = 60_000
"""The longest a replica holds writes back, should nothing release it."""


class ServersUnavailable(RuntimeError):
    """`redis-server` is missing or would not start here."""


@dataclass
class Server:
    role: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def client(self, timeout_s: float = 1.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout_s, socket_connect_timeout=1
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass(frozen=True)
class Failover:
    killed: Server
    promoted: Server
    seconds: float
    """From the kill until the promoted server answered as the primary."""


@dataclass
class SentinelGroup:
    """One primary, `replicas` replicas and three Sentinels, started together."""

    replicas: int = 2
    sentinels: int = 3
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-sentinel-")))
    servers: list[Server] = field(default_factory=list)
    """The data servers, the first primary first."""
    sentinel_servers: list[Server] = field(default_factory=list)
    _held: list[Server] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def started(cls, replicas: int = 2) -> Iterator[SentinelGroup]:
        """A running group, stopped and removed at the end; `ServersUnavailable` if it cannot
        be started here."""
        if shutil.which("redis-server") is None:
            raise ServersUnavailable("redis-server is not installed")
        group = cls(replicas=replicas)
        try:
            group._start()
            yield group
        finally:
            group.stop()

    def url(self, db: int = 0) -> str:
        """`REDIS_URL` naming the group through its Sentinels."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinel_servers)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    # --- starting and stopping ---------------------------------------------------------------

    def _start(self) -> None:
        primary = self._server("primary")
        self._launch(primary, [])
        for i in range(self.replicas):
            replica = self._server(f"replica-{i + 1}")
            # The first replica is the one the Sentinels promote (the lowest priority wins), so
            # a drill knows which server must have missed writes.
            priority = str(10 if i == 0 else 100)
            self._launch(
                replica,
                ["--replicaof", "127.0.0.1", str(primary.port), "--replica-priority", priority],
            )
        for i in range(self.sentinels):
            sentinel = Server(f"sentinel-{i + 1}", free_port(), self.root / f"sentinel-{i + 1}")
            sentinel.directory.mkdir()
            config = sentinel.directory / "sentinel.conf"
            config.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.directory}\n"
                f"logfile {sentinel.directory / 'server.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} {self.replicas}\n"
            )
            self._spawn(sentinel, [str(config), "--sentinel"])
            self.sentinel_servers.append(sentinel)
        wait_for(self._settled, START_TIMEOUT_S, "the replicas in sync and the Sentinels ready")

    def _server(self, role: str) -> Server:
        server = Server(role, free_port(), self.root / role)
        server.directory.mkdir()
        self.servers.append(server)
        return server

    def _launch(self, server: Server, extra: list[str]) -> None:
        self._spawn(
            server,
            [
                "--port",
                str(server.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(server.directory),
                "--logfile",
                str(server.directory / "server.log"),
                "--save",
                "",
                "--appendonly",
                "no",
                # Full syncs without a disk file and without the default 5 s wait for more
                # replicas: a replica is in sync within milliseconds.
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
                *extra,
            ],
        )

    def _spawn(self, server: Server, argv: list[str]) -> None:
        try:
            server.process = subprocess.Popen(
                ["redis-server", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise ServersUnavailable(f"redis-server would not start: {exc}") from exc
        try:
            wait_for(lambda: _pings(server), START_TIMEOUT_S, f"{server.role} to answer")
        except AssertionError as exc:
            raise ServersUnavailable(f"{server.role} did not start: {server.log()}") from exc

    def _settled(self) -> bool:
        for replica in self.servers[1:]:
            with replica.client() as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        for sentinel in self.sentinel_servers:
            with sentinel.client() as client:
                state = client.sentinel_master(SERVICE)
                if int(state["num-slaves"]) < self.replicas:
                    return False
                if int(state["num-other-sentinels"]) < self.sentinels - 1:
                    return False
        return True

    def stop(self) -> None:
        """Kill every server and remove its directory."""
        for server in [*self.sentinel_servers, *self.servers]:
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- faults and what the Sentinels say -----------------------------------------------------

    def primary(self) -> Server:
        """The server the Sentinels name as the primary now."""
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def primary_port(self) -> int | None:
        """The primary's port according to a majority of the Sentinels that answer."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinel_servers:
            if not sentinel.running:
                continue
            with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
                if address:
                    port = int(address[1])
                    votes[port] = votes.get(port, 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best and best[1] * 2 > len(self.sentinel_servers) else None

    def hold_replication(
        self, replica: Server | None = None, scripts: Iterable[str] = ()
    ) -> Server:
        """Make `replica` (the one promoted first, by default) stop applying writes from the
        primary until `kill_primary()` or `release_replication()`; return it.

        The pause also holds `SCRIPT LOAD` back, which a replica that is merely behind would
        run: `scripts` (the read scripts clients will call on it) are loaded first."""
        replica = replica or self.servers[1]
        with replica.client() as client:
            for script in scripts:
                client.script_load(script)
            client.execute_command("CLIENT", "PAUSE", HOLD_LIMIT_MS, "WRITE")
        self._held.append(replica)
        return replica

    def release_replication(self) -> None:
        """Let every held replica apply the primary's stream again (it catches up)."""
        for held in self._held:
            with held.client() as client:
                client.execute_command("CLIENT", "UNPAUSE")
        self._held.clear()

    def kill_primary(self) -> Failover:
        """SIGKILL the primary, release held replicas, and wait until the Sentinels promoted
        another server."""
        victim = self.primary()
        assert victim.process is not None
        killed_at = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(5)
        # Let the replica see the link die before it may apply anything more.
        wait_for(self._links_down, 5.0, "the replicas to lose their primary")
        self.release_replication()

        def promoted() -> Server | None:
            port = self.primary_port()
            if port is None or port == victim.port:
                return None
            server = next(s for s in self.servers if s.port == port)
            with contextlib.suppress(redis.RedisError), server.client() as client:
                if client.info("replication").get("role") == "master":
                    return server
            return None

        successor = wait_for(promoted, FAILOVER_WAIT_S, "the Sentinels to promote a replica")
        assert successor is not None
        return Failover(victim, successor, time.monotonic() - killed_at)

    def _links_down(self) -> bool:
        for server in self.servers:
            if server.running:
                with server.client() as client:
                    if client.info("replication").get("master_link_status") == "up":
                        return False
        return True

    def replicas_of(self, primary: Server) -> list[Server]:
        """The running servers that replicate `primary` with their link up."""
        found = []
        for server in self.servers:
            if server is primary or not server.running:
                continue
            with contextlib.suppress(redis.RedisError), server.client() as client:
                info = client.info("replication")
                if info.get("master_port") == primary.port and info.get("master_link_status") == (
                    "up"
                ):
                    found.append(server)
        return found


def _pings(server: Server) -> bool:
    if server.process is not None and server.process.poll() is not None:
        raise AssertionError(f"{server.role} exited with {server.process.returncode}")
    try:
        with server.client() as client:
            return bool(client.ping())
    except redis.RedisError:
        return False
