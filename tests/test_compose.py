"""The developer tooling holds together: compose file, image, CI entry point, Makefile, runner.

Needs no services: it reads files and runs `docker-compose config`, which needs no engine.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP_MODULES = {
    "gateway": "gateway",
    "command_worker": "command_worker",
    "projector_worker": "projector_worker",
}
INFRA = {"rabbitmq", "postgres", "redis"}
OBSERVABILITY = {"prometheus", "grafana", "jaeger"}
"""The services of the `observability` profile: not started by a plain `docker compose up`."""
SERVICE_NAMES = {
    "gateway": "gateway",
    "command_worker": "command-worker",
    "projector_worker": "projector",
}
"""`OTEL_SERVICE_NAME` of each app service: the name its traces carry."""


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of `ports:` entries, short ("127.0.0.1:80:8080") or long syntax."""
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["published"]))
        else:
            ports.add(int(str(entry).split("/")[0].split(":")[-2]))
    return ports


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_file_is_valid() -> None:
    command = compose_command()
    if command is None:
        pytest.skip(
            "neither docker-compose nor `docker compose` is installed (.ci/run installs it)"
        )
    result = subprocess.run(
        [*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_app_services_are_exactly_the_three_processes(services: dict[str, Any]) -> None:
    assert set(services) == INFRA | set(APP_MODULES) | OBSERVABILITY


@pytest.mark.parametrize(("service", "module"), APP_MODULES.items())
def test_app_service_runs_an_existing_entry_point(
    services: dict[str, Any], service: str, module: str
) -> None:
    argv = as_argv(services[service]["command"])
    assert argv[:3] == ["python", "-m", module]
    assert (ROOT / module / "__main__.py").is_file(), f"{module}/__main__.py is missing"


@pytest.mark.parametrize("service", sorted(INFRA | set(APP_MODULES)))
def test_every_service_has_a_healthcheck(services: dict[str, Any], service: str) -> None:
    healthcheck = services[service].get("healthcheck")
    assert healthcheck, f"{service} has no healthcheck"
    assert not healthcheck.get("disable", False)
    assert healthcheck["test"]


@pytest.mark.parametrize("service", sorted(APP_MODULES))
def test_app_services_wait_for_healthy_infrastructure(
    services: dict[str, Any], service: str
) -> None:
    depends_on = services[service]["depends_on"]
    assert isinstance(depends_on, dict), "the list form cannot ask for service_healthy"
    assert set(depends_on) == INFRA
    assert {d["condition"] for d in depends_on.values()} == {"service_healthy"}


@pytest.mark.parametrize("service", sorted(APP_MODULES))
def test_app_services_point_at_the_compose_services(services: dict[str, Any], service: str) -> None:
    env = services[service]["environment"]
    hosts = {
        name: urlsplit(env[name]).hostname for name in ("AMQP_URL", "DATABASE_URL", "REDIS_URL")
    }
    assert hosts == {"AMQP_URL": "rabbitmq", "DATABASE_URL": "postgres", "REDIS_URL": "redis"}


@pytest.mark.parametrize("service", ["command_worker", "projector_worker"])
def test_workers_serve_health_and_can_scale(services: dict[str, Any], service: str) -> None:
    worker = services[service]
    port = str(worker["environment"]["METRICS_PORT"])
    assert f":{port}/health/ready" in " ".join(as_argv(worker["healthcheck"]["test"]))
    assert not worker.get("ports"), "a fixed host port would break --scale"
    assert "container_name" not in worker


def test_public_ports_are_mapped(services: dict[str, Any]) -> None:
    assert {5672, 15672} <= published_ports(services["rabbitmq"])
    assert 8000 in published_ports(services["gateway"])
    assert "/health/ready" in " ".join(as_argv(services["gateway"]["healthcheck"]["test"]))


def test_image_runs_as_non_root() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.strip().upper().startswith("USER ")]
    assert users, "the Dockerfile never leaves root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    cmd = next(line for line in reversed(lines) if line.startswith("CMD"))
    assert '"python", "-m", "gateway"' in cmd


def test_ci_runs_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert re.search(r"^\s*make test\b", script, re.MULTILINE)


def test_makefile_has_run_and_test_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("install", "services", "run", "test", "lint"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no `{target}` target"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_the_process_counts() -> None:
    result = subprocess.run(
        ["make", "-n", "run", "COMMAND_WORKERS=3", "PROJECTOR_WORKERS=2", "PORT=8123"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    run_line = " ".join(result.stdout.replace("\\\n", " ").split())
    assert "scripts/run.py --port 8123 --command-workers 3 --projector-workers 2" in run_line


@pytest.mark.parametrize("script", [".ci/run", "scripts/ensure-services.sh"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_runner_help_works() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--command-workers", "--projector-workers", "--port"):
        assert option in result.stdout


# --- the observability profile ------------------------------------------------------------------


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the file or folder of this repository bind-mounted there."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        assert source.startswith("./"), f"{volume}: only files of the repository are mounted"
        found[target] = ROOT / source
    return found


def mounted(service: dict[str, Any], container_path: str) -> Path:
    """The repository file behind `container_path` in the service (under a mounted folder too)."""
    for target, source in mounts(service).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"nothing is mounted at {container_path}")


def test_observability_services_start_only_with_their_profile(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        expected = ["observability"] if name in OBSERVABILITY else None
        assert service.get("profiles") == expected, name


@pytest.mark.parametrize("service", sorted(INFRA | set(APP_MODULES) | OBSERVABILITY))
def test_host_ports_are_local_and_images_pinned(services: dict[str, Any], service: str) -> None:
    for entry in services[service].get("ports", []):
        assert str(entry).startswith("127.0.0.1:"), f"{service} publishes {entry} beyond this host"
    image = str(services[service]["image"])
    tag = image.rpartition(":")[2] if ":" in image else ""
    assert tag not in {"", "latest"}, f"{service}: pin the image's tag ({image})"
    if service in OBSERVABILITY:
        assert re.search(r"\d", tag), f"{service}: pin a version, not a moving tag ({image})"


def test_prometheus_scrapes_every_replica_of_every_app_service(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config_file = mounted(prometheus, "/etc/prometheus/prometheus.yml")
    assert config_file.is_file(), config_file
    config = yaml.safe_load(config_file.read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", "A records list every replica of a scaled service"
            for name in sd["names"]:
                scraped[name] = int(sd["port"])
    gateway_argv = as_argv(services["gateway"]["command"])
    assert scraped == {
        "gateway": int(gateway_argv[gateway_argv.index("--port") + 1]),
        "command_worker": int(services["command_worker"]["environment"]["METRICS_PORT"]),
        "projector_worker": int(services["projector_worker"]["environment"]["METRICS_PORT"]),
    }
    for worker in ("command_worker", "projector_worker"):
        assert services[worker]["environment"]["METRICS_HOST"] == "0.0.0.0", worker


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    for target, source in mounts(grafana).items():
        assert source.exists(), f"{source} (mounted at {target}) is missing"
    datasources = mounted(grafana, "/etc/grafana/provisioning/datasources")
    [datasource] = [
        entry
        for path in sorted(datasources.glob("*.yml"))
        for entry in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert url.port in published_ports(services["prometheus"])
    providers = [
        provider
        for path in sorted(mounted(grafana, "/etc/grafana/provisioning/dashboards").glob("*.yml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers, "no dashboard provider"
    for provider in providers:
        folder = mounted(grafana, provider["options"]["path"])
        assert sorted(folder.glob("*.json")), f"no dashboard in {folder}"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted(grafana, home).is_file()


def test_tracing_is_off_unless_the_otlp_endpoint_is_set(services: dict[str, Any]) -> None:
    for service, name in SERVICE_NAMES.items():
        env = services[service]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}", service
        assert env["OTEL_SERVICE_NAME"] == name
    assert {4317, 4318, 16686} <= published_ports(services["jaeger"])
    header = (ROOT / "docker-compose.yml").read_text().split("\nservices:", 1)[0]
    assert (
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318 docker compose --profile observability "
        "up --build" in header
    )
