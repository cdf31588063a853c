"""The README and the docs are the manual: every setting and route they promise must be real,
every link must lead somewhere, and each table lives in one file only."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import orjson
import pytest

from bench.ceilings_figures import sizing_table, table
from common.settings import Settings
from gateway.app import create_app
from orders.settings import OrdersSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETTINGS_DOC = ROOT / "docs" / "settings.md"
API_DOC = ROOT / "docs" / "api.md"
CHAOS_TABLE = ROOT / "tests" / "chaos" / "last-run.md"
MANUAL = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

README_MAX_LINES = 150
SETTING_ROW = re.compile(r"^\| `([A-Z_]+)` \|", flags=re.MULTILINE)
ROUTE = re.compile(r"`(GET|POST|DELETE) (/[^ `?]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def text(path: Path) -> str:
    return path.read_text()


@cache
def served_routes() -> frozenset[tuple[str, str]]:
    spec = create_app(Settings()).openapi()
    return frozenset((m.upper(), p) for p, ops in spec["paths"].items() for m in ops)


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", text(path)), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def test_every_setting_is_documented_once() -> None:
    documented = SETTING_ROW.findall(text(SETTINGS_DOC))
    orders_prefix = OrdersSettings.model_config.get("env_prefix", "")
    assert len(documented) == len(set(documented))
    assert set(documented) == {name.upper() for name in Settings.model_fields} | {
        f"{orders_prefix}{name}".upper() for name in OrdersSettings.model_fields
    }
    for path in MANUAL:
        if path != SETTINGS_DOC:
            assert not SETTING_ROW.findall(text(path)), f"{path.name} copies a settings row"


@pytest.mark.parametrize("path", [README, API_DOC], ids=lambda p: p.name)
def test_every_documented_route_exists(path: Path) -> None:
    for method, route in ROUTE.findall(text(path)):
        assert (method, route) in served_routes(), f"{method} {route} is documented but not served"


def test_every_served_route_is_documented() -> None:
    documented = set(ROUTE.findall(text(API_DOC)))
    assert served_routes() <= documented, sorted(served_routes() - documented)


def test_every_try_it_request_is_served() -> None:
    section = text(README).split("## Try it", 1)[1].split("\n## ", 1)[0]
    calls = section.split("curl ")[1:]
    assert len(calls) >= 5
    templates = [
        (method, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
        for method, path in served_routes()
    ]
    for call in calls:
        url = re.search(r"localhost:8000(/[^\s?']*)", call)
        assert url, f"no URL in: curl {call}"
        explicit = re.search(r"-X(\w+)", call)
        method = explicit.group(1) if explicit else ("POST" if " -d " in call else "GET")
        path = url.group(1).replace("<id>", "0b8f1e9c-3a1f-4c55-9e43-5f4c1f0f6a11")
        assert any(m == method and p.match(path) for m, p in templates), f"{method} {path}"


def test_the_two_commands_are_shown() -> None:
    readme = text(README)
    assert "make run" in readme
    assert "make test" in readme


def test_the_readme_stays_a_landing_page() -> None:
    lines = text(README).count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("path", MANUAL, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(path: Path) -> None:
    for target in LINK.findall(FENCE.sub("", text(path))):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.is_file(), f"{path.name}: {target} leads to no file"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{path.name}: {target} leads to no heading"


def test_the_chaos_table_lives_in_the_drills_output_only() -> None:
    header = "| scenario | accepted"
    assert header in text(CHAOS_TABLE)
    for path in MANUAL:
        assert header not in text(path), f"{path.name} copies the chaos table; link to it"


SCALING_DOC = ROOT / "docs" / "scaling.md"
CEILINGS = ROOT / "bench" / "ceilings.json"
SETTING_NAME = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=[^`]*)?`")


def test_the_scaling_doc_names_only_real_settings() -> None:
    real = {name.upper() for name in Settings.model_fields}
    named = set(SETTING_NAME.findall(text(SCALING_DOC)))
    assert "AMQP_URL" in named
    assert named <= real, sorted(named - real)


def test_the_scaling_doc_names_only_real_metrics() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    from common.observability import metrics

    real = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            real.add(f"{value._name}_total")
        elif isinstance(value, Gauge | Histogram):
            real.add(value._name)
    named = set(re.findall(rf"`(?:rate\()?({metrics.NAMESPACE}_[a-z_]+)", text(SCALING_DOC)))
    assert "orders_relay_lag_positions" in named
    assert named <= real, sorted(named - real)


def test_the_scaling_table_is_the_last_ceilings_run() -> None:
    results = orjson.loads(CEILINGS.read_bytes())
    assert "failed" not in results
    assert not results["plan"]["quick"]
    assert table(results) in text(SCALING_DOC), "rerun the table from bench/ceilings.json"
    assert sizing_table(results) in text(SCALING_DOC), "rerun the sizing from ceilings.json"
