"""The README and the docs it points to are the manual: every setting and every route they
promise must be real."""

from __future__ import annotations

import re
from pathlib import Path

from common.settings import Settings
from gateway.app import create_app
from orders.settings import OrdersSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text()
API_DOC = (ROOT / "docs" / "api.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", SETTINGS_DOC, flags=re.MULTILINE))
    orders_prefix = OrdersSettings.model_config.get("env_prefix", "")
    assert documented == {name.upper() for name in Settings.model_fields} | {
        f"{orders_prefix}{name}".upper() for name in OrdersSettings.model_fields
    }


def test_every_documented_route_exists() -> None:
    spec = create_app(Settings()).openapi()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    for method, path in re.findall(r"`(GET|POST|DELETE) (/[^ `?]*)", README + API_DOC):
        assert (method, path) in routes, f"{method} {path} is documented but not served"


def test_the_two_commands_are_shown() -> None:
    assert "make run" in README
    assert "make test" in README
