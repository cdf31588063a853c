"""A throw-away RabbitMQ cluster of three local nodes, for tests, drills and the benchmark.

Each node is the installed `rabbitmq-server`, run as the `rabbitmq` user (whose Erlang cookie
the nodes and the CLI tools then share), with a name, an AMQP port, a distribution port, a
configuration (management off) and a data and log directory of its own, so the machine's own
node (`rabbit@localhost`) is never touched. The nodes are started together, then the second
and third join the first (`rabbitmqctl -n NODE stop_app / join_cluster / start_app`), and
`rabbit_cluster()` stops them and removes their directories whatever happens.

Two clusters side by side never collide: node names carry a run id, and ports are free ones
the kernel hands out (far from 5672/15672/25672), chosen and bound under a lock, one start at a
time (`harness.processes.free_port`). Standard library and the harness only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.isolation import Endpoints, answers
from harness.processes import free_port

USER = "rabbitmq"
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
"""The server script itself, not the /usr/sbin wrapper (which logs to the machine node's
startup_log)."""
CTL = "rabbitmqctl"
"""The wrapper: as root it switches to the rabbitmq user, whose cookie the nodes share."""
LOCK = Path(tempfile.gettempdir()) / "orders-rabbit-cluster.lock"
ERL_ARGS = "+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none"
"""Two schedulers that do not busy-wait: three more VMs on a small shared machine."""
START_S = 120.0
"""How long a node may take to boot or rejoin on a loaded 2-core machine."""

Say = Callable[[str], None]


class ClusterUnavailable(RuntimeError):
    """A local cluster cannot be started here (not root, RabbitMQ not installed...)."""


def unavailable_reason() -> str | None:
    """Why no cluster can be started on this machine, or None when one can be tried."""
    if os.geteuid() != 0:
        return "starting RabbitMQ nodes as the rabbitmq user needs root"
    if not SERVER.exists() or shutil.which(CTL) is None:
        return f"RabbitMQ is not installed here ({SERVER}, {CTL})"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"there is no {USER} user"
    return None


@dataclass
class Node:
    """One node of the cluster."""

    name: str
    """`orders-<run>-<n>@localhost`."""
    amqp_port: int
    dist_port: int
    home: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        """`host:port`, as processes log and label the node they are on."""
        return f"127.0.0.1:{self.amqp_port}"

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def environment(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": pwd.getpwnam(USER).pw_dir,
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.home / "pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
            # The server script then execs the VM (no signal-forwarding shell in between), so
            # our child's pid is the node's: kill -9 hits the node itself.
            "RUNNING_UNDER_SYSTEMD": "true",
        }

    def prepare(self) -> None:
        """The node's configuration and directories, owned by the rabbitmq user."""
        (self.home / "log").mkdir(parents=True)
        (self.home / "mnesia").mkdir()
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.home / "advanced.config").write_text("[].\n")
        (self.home / "enabled_plugins").write_text("[].\n")
        account = pwd.getpwnam(USER)
        for path in [self.home, *self.home.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)

    def start(self) -> None:
        out = open(self.home / "log" / "console.log", "ab")  # noqa: SIM115 (the child owns it)
        with out:
            self.popen = subprocess.Popen(
                [str(SERVER)],
                env=self.environment(),
                user=USER,
                group=USER,
                extra_groups=[],
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the node's VM: no goodbye to its peers or clients."""
        if self.popen is not None and self.running:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(30)

    def terminate(self, timeout_s: float = 60) -> None:
        """Stop the node (SIGTERM is a clean shutdown for RabbitMQ), SIGKILL if it lingers."""
        if self.popen is None or not self.running:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 1500) -> str:
        logs = sorted((self.home / "log").glob("*.log"))
        return "".join(path.read_text(errors="replace")[-chars:] for path in logs)


@dataclass
class RabbitCluster:
    """The running nodes and the CLI calls a test or a drill makes on them."""

    nodes: list[Node]
    home: Path
    say: Say = field(default=lambda _: None)

    @property
    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def amqp_url(self, vhost: str) -> str:
        """`AMQP_URL` naming every node (a stopped one too: processes must skip it)."""
        return ",".join(node.url(vhost) for node in self.nodes)

    def endpoints(self, services: Endpoints) -> Endpoints:
        """`services` with RabbitMQ replaced by this cluster (no management API: vhosts are
        made with rabbitmqctl on a running node, and go with the cluster)."""
        first, *others = self.nodes
        return replace(
            services,
            amqp_host="127.0.0.1",
            amqp_port=first.amqp_port,
            amqp_nodes=tuple(n.amqp_port for n in others),
            management_port=None,
            rabbitmq_nodes=tuple(n.name for n in self.nodes),
            rabbitmq_disposable=True,
        )

    def ctl(self, *args: str, node: Node | None = None, timeout: float = 120) -> str:
        """`rabbitmqctl -n NODE args` on `node`, else on the first running node; its output."""
        target = node or self.running[0]
        done = subprocess.run(
            [CTL, "-n", target.name, *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {target.name} {' '.join(args)}: {done.stderr or done.stdout}"
            )
        return done.stdout

    def queues(self, vhost: str) -> list[dict[str, object]]:
        """Every queue of `vhost` with its leader and members (node names)."""
        out = self.ctl(
            "list_queues", "-p", vhost, "name", "leader", "members", "--formatter", "json", "-q"
        )
        return list(json.loads(out))

    def leader_of(self, vhost: str, queue: str) -> Node:
        for row in self.queues(vhost):
            if row["name"] == queue:
                return self.node_named(str(row["leader"]))
        raise LookupError(f"no queue {queue} in vhost {vhost}")

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def stop(self, node: Node) -> None:
        """`rabbitmqctl stop`: the node shuts down cleanly (queues hand over leadership)."""
        self.ctl("stop", node=node)
        if node.popen is not None:
            node.popen.wait(START_S)

    def wait_running(self, nodes: list[Node], timeout_s: float = START_S) -> None:
        """Until each node's AMQP listener answers (it opens last in a boot)."""
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            while not answers("127.0.0.1", node.amqp_port):
                if not node.running:
                    raise ClusterUnavailable(f"{node.name} exited: {node.log_tail()}")
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(f"{node.name} not up in {timeout_s:.0f}s")
                time.sleep(0.2)

    def form(self) -> None:
        """Join every node to the first, one at a time."""
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl("stop_app", node=node)
            self.ctl("join_cluster", first.name, node=node)
            self.ctl("start_app", node=node)
        self.wait_running(self.nodes)
        status = json.loads(self.ctl("cluster_status", "--formatter", "json", node=first))
        if sorted(status["running_nodes"]) != sorted(n.name for n in self.nodes):
            raise ClusterUnavailable(f"cluster formed with {status['running_nodes']} running")

    def remove(self) -> None:
        for node in self.nodes:
            node.terminate()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def rabbit_cluster(size: int = 3, say: Say = lambda _: None) -> Iterator[RabbitCluster]:
    """A running cluster of `size` nodes, stopped and removed afterwards (also on failure);
    `ClusterUnavailable` when it cannot be started here."""
    reason = unavailable_reason()
    if reason is not None:
        raise ClusterUnavailable(reason)
    run = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix=f"orders-rabbit-{run}-"))
    os.chmod(home, 0o755)
    cluster = RabbitCluster([], home, say)
    started = time.monotonic()
    try:
        with _lock():
            for n in range(1, size + 1):
                node = Node(f"orders-{run}-{n}@localhost", free_port(), free_port(), home / str(n))
                node.prepare()
                cluster.nodes.append(node)
            for node in cluster.nodes:
                node.start()
            cluster.wait_running(cluster.nodes)
        cluster.form()
        say(
            f"  RabbitMQ cluster of {size} up in {time.monotonic() - started:.0f}s: "
            + ", ".join(f"{n.name} on {n.amqp_port}" for n in cluster.nodes)
        )
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One cluster start at a time on this machine: ports are chosen free and bound by the
    nodes inside it."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
