"""Drive the real `.gitlab-ci.yml` with gitlab-ci-local on a throwaway Git repository.

Pipelines run through `crispml ci local` (pipeline/gitops/local.py), the command a person
uses: gitlab-ci-local runs the jobs in the shell (`--force-shell-executor`), each in a
fresh copy of the committed tree (`--shell-isolation`), with artifacts passed between
jobs as GitLab would and never copied back (`--no-artifacts-to-source`). What
gitlab-ci-local does not do, the command does from the real file:

* it ignores `workflow:rules`, so `workflow_variables` evaluates them (which pipelines
  exist, and the variables such as CRISPML_ENV they set) and passes the result on;
* it cannot open merge requests, so a merge request pipeline is a run with
  CI_PIPELINE_SOURCE=merge_request_event and the CI_MERGE_REQUEST_* variables set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.gitops.local import (
    RuleSyntaxError,
    evaluate,
    load_ci,
    workflow_variables,
)

PROJECT = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = shutil.which("gitlab-ci-local")
requires_gitlab_ci_local = pytest.mark.skipif(
    GITLAB_CI_LOCAL is None,
    reason="gitlab-ci-local is not installed (npm install -g gitlab-ci-local@4.60.0); "
    "these tests run the real .gitlab-ci.yml with it",
)

# What a throwaway repository needs from the project: code, pipeline, environments, CI.
PROJECT_FILES = (
    ".gitlab-ci.yml",
    ".gitignore",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "environments",
    "pipeline",
)


# --------------------------------------------------------------------------- rules

# The evaluator of `workflow:rules` is the one `crispml ci local` uses.
__all__ = [
    "RuleSyntaxError",
    "evaluate",
    "load_ci",
    "workflow_variables",
]


# --------------------------------------------------------------------------- repository


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "CrispML Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "CrispML Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def copy_project(target: Path, extra: Sequence[str] = ()) -> Path:
    """The project's pipeline files, as Git would check them out, in `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in (*PROJECT_FILES, *extra):
        source = PROJECT / name
        if not source.exists():
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination)
    return target


def set_key(text: str, key: str, value: str) -> str:
    """Change the first `key:` line of a YAML text, keeping comments and layout."""
    new, count = re.subn(
        rf"(?m)^(\s*{re.escape(key)}:)[ \t]*[^\n#]*", rf"\g<1> {value}", text, count=1
    )
    assert count == 1, f"no {key!r} line"
    return new


def edit(path: Path, **changes: str) -> None:
    text = path.read_text(encoding="utf-8")
    for key, value in changes.items():
        text = set_key(text, key, value)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- running


@dataclass
class PipelineRun:
    """One gitlab-ci-local invocation: its exit code, log, and each job's outcome."""

    returncode: int
    output: str
    jobs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def status(self, job: str) -> str:
        return self.jobs.get(job, "not run")

    def log(self, job: str) -> str:
        prefix = re.compile(rf"^{re.escape(job)}\s+[>$]\s?(.*)$")
        return "\n".join(
            m.group(1) for line in self.output.splitlines() if (m := prefix.match(line))
        )


_RESULT = re.compile(r"^\s*(PASS|FAIL|WARN)\s+(\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_pipeline(
    repo: Path,
    env: str | None = None,
    *,
    mr: str | None = None,
    iid: int = 1,
    source: str = "push",
    jobs: Sequence[str] = (),
    manual: Sequence[str] = (),
    variables: Mapping[str, str] | None = None,
    state: Path | None = None,
    timeout: float = 1800,
) -> PipelineRun:
    """Run jobs of the real .gitlab-ci.yml as one pipeline, with `crispml ci local`."""
    import time

    assert GITLAB_CI_LOCAL, "gitlab-ci-local is not installed"
    crispml = shutil.which("crispml")
    assert crispml, "crispml is not on PATH"
    args = [crispml, "ci", "local"]
    if env:
        args.append(env)
    if mr:
        args += ["--mr", mr, "--iid", str(iid)]
    args += ["--source", source]
    args += [f"--job={job}" for job in jobs]
    args += [f"--manual={job}" for job in manual]
    args += [f"--variable={k}={v}" for k, v in (variables or {}).items()]
    if state is not None:
        args += ["--state", str(state)]
    ci = load_ci(repo / ".gitlab-ci.yml")
    started = time.monotonic()
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=timeout)
    output = _ANSI.sub("", done.stdout + done.stderr)
    results = {}
    for line in output.splitlines():
        match = _RESULT.match(line)
        if match and match.group(2) in ci:
            results[match.group(2)] = match.group(1).lower()
    return PipelineRun(done.returncode, output, results, time.monotonic() - started)


def artifact(repo: Path, job: str, path: str) -> Path:
    """A file from a job's artifacts, as gitlab-ci-local keeps them."""
    folder = repo / ".gitlab-ci-local" / "artifacts"
    candidates = [folder / job / path] + [
        p / path for p in folder.glob(f"{job.replace(':', '*')}*")
    ]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise AssertionError(f"job {job!r} has no artifact {path!r} under {folder}")
