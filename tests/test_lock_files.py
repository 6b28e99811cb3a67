"""The lock files (scripts/lock) still meet pyproject.toml: a dependency added or raised there
without `./scripts/lock` fails here, not as an ImportError somewhere later."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(name: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    lines = (ROOT / name).read_text().splitlines()
    for n, line in enumerate(lines):
        if m := PIN.match(line):
            assert line.endswith("\\") and lines[n + 1].strip().startswith("--hash=sha256:"), f"{name}: {line} has no hash"
            found[canonicalize_name(m[1])] = Version(m[2])
    return found


@pytest.mark.parametrize(("lock", "extras"), [
    ("requirements.lock", []),
    ("requirements-dev.lock", ["test", "schemathesis", "demo"]),
])
def test_the_lock_meets_pyproject(lock: str, extras: list[str]) -> None:
    locked = pins(lock)
    wanted = [*PROJECT["dependencies"], *(r for extra in extras for r in PROJECT["optional-dependencies"][extra])]
    unmet = []
    for spec in map(Requirement, wanted):
        if spec.marker and not spec.marker.evaluate():
            continue
        have = locked.get(canonicalize_name(spec.name))
        if have is None or not spec.specifier.contains(have, prereleases=True):
            unmet.append(f"{spec} (locked: {have})")
    assert unmet == [], f"{lock} is stale, run ./scripts/lock: {unmet}"


def test_the_dev_lock_holds_the_runtime_pins() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
