"""Write the image's lock: the part of `requirements.lock` that the service itself needs.

`requirements.lock` pins everything (the service, the tests, the benchmark). The image installs
only what `[project] dependencies` in pyproject.toml pull in, with the same versions and hashes:
this walks those requirements (extras and markers included) through the metadata of the
packages installed from the full lock, and copies their entries out of it unchanged.

    python scripts/runtime_lock.py            # write requirements-runtime.lock
    python scripts/runtime_lock.py --check    # exit 1 if it differs from what would be written
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT / "requirements.lock"
RUNTIME = ROOT / "requirements-runtime.lock"
HEADER = """\
# The service's own dependencies, pinned with hashes: the subset of requirements.lock that
# [project] dependencies in pyproject.toml pull in, written by `make lock`. The image installs it.
"""


def entries(lock: str) -> dict[str, str]:
    """Each pinned package of a pip-compile lock with its pin and hash lines."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lock.splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if pin:
            current = blocks.setdefault(canonicalize_name(pin.group(1)), [])
            current.append(line)
        elif current is not None and line.startswith("    --hash"):
            current.append(line)
        elif not line.lstrip().startswith("#"):
            current = None
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def closure(roots: list[str]) -> set[str]:
    """Every distribution the requirements `roots` need here, through installed metadata."""
    needed: set[str] = set()
    pending = [(Requirement(r), "") for r in roots]
    seen: set[tuple[str, str]] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        needed.add(name)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            for spec in metadata.requires(name) or []:
                child = Requirement(spec)
                if child.marker is None or wanted == "" or "extra" in str(child.marker):
                    pending.append((child, wanted))
    return needed


def runtime_lock() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    blocks = entries(FULL.read_text())
    needed = closure(project["dependencies"])
    missing = sorted(needed - blocks.keys())
    if missing:
        raise SystemExit(f"not in {FULL.name} (run make lock): {', '.join(missing)}")
    return HEADER + "".join(blocks[name] + "\n" for name in sorted(needed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    text = runtime_lock()
    if args.check:
        if not RUNTIME.exists() or RUNTIME.read_text() != text:
            print(f"{RUNTIME.name} is out of date: run make lock", file=sys.stderr)
            return 1
        return 0
    RUNTIME.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
