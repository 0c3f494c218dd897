"""Drive the real `.gitlab-ci.yml` with gitlab-ci-local on a throwaway Git repository.

gitlab-ci-local runs jobs in the shell (`--force-shell-executor`), each in a fresh copy
of the committed tree (`--shell-isolation`), with artifacts passed between jobs as
GitLab would. Two things it does not do are done here, from the real file:

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
from typing import Any

import pytest
import yaml

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


class RuleSyntaxError(ValueError):
    """An expression this evaluator does not know: fail loudly, never guess."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<var>\$[A-Za-z_][A-Za-z0-9_]*)
      | (?P<str>"[^"]*"|'[^']*')
      | (?P<re>/(?:\\/|[^/])*/)
      | (?P<op>==|!=|=~|!~|&&|\|\||\(|\))
      | (?P<null>null)
    )""",
    re.VERBOSE,
)


def _tokens(expression: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expression = expression.strip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if not match or match.end() == pos:
            raise RuleSyntaxError(f"cannot parse {expression[pos:]!r} in {expression!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(expression) and expression[pos].isspace():
            pos += 1
    return out


def evaluate(expression: str, variables: Mapping[str, str]) -> bool:
    """Evaluate a GitLab `rules:if` expression (the subset .gitlab-ci.yml uses)."""
    tokens = _tokens(expression)
    position = 0

    def peek() -> tuple[str, str] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal position
        token = tokens[position]
        position += 1
        return token

    def value(token: tuple[str, str]) -> Any:
        kind, text = token
        if kind == "var":
            return variables.get(text[1:]) or None
        if kind == "str":
            return text[1:-1]
        if kind == "null":
            return None
        if kind == "re":
            return re.compile(text[1:-1])
        raise RuleSyntaxError(f"unexpected {text!r} in {expression!r}")

    def comparison() -> bool:
        token = take()
        if token == ("op", "("):
            result = disjunction()
            if take() != ("op", ")"):
                raise RuleSyntaxError(f"missing ')' in {expression!r}")
            return result
        left = value(token)
        following = peek()
        if following and following[0] == "op" and following[1] in ("==", "!=", "=~", "!~"):
            op = take()[1]
            right = value(take())
            if op == "==":
                return left == right
            if op == "!=":
                return left != right
            matched = bool(left is not None and right.search(left))
            return matched if op == "=~" else not matched
        return bool(left)

    def conjunction() -> bool:
        result = comparison()
        while peek() == ("op", "&&"):
            take()
            result = comparison() and result
        return result

    def disjunction() -> bool:
        result = conjunction()
        while peek() == ("op", "||"):
            take()
            result = conjunction() or result
        return result

    result = disjunction()
    if position != len(tokens):
        raise RuleSyntaxError(f"trailing tokens in {expression!r}")
    return result


def workflow_variables(
    ci: Mapping[str, Any], variables: Mapping[str, str]
) -> dict[str, str] | None:
    """What `workflow:rules` decides: None when no pipeline runs, else its variables."""
    for rule in ci.get("workflow", {}).get("rules", []):
        if "if" in rule and not evaluate(rule["if"], variables):
            continue
        if rule.get("when") == "never":
            return None
        return {k: str(v) for k, v in (rule.get("variables") or {}).items()}
    return None


def load_ci(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


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
    jobs: Sequence[str],
    variables: Mapping[str, str],
    unset: Sequence[str] = (),
    manual: Sequence[str] = (),
    timeout: float = 900,
) -> PipelineRun:
    """Run `jobs` of the real .gitlab-ci.yml as one pipeline; raise if none would exist."""
    import time

    assert GITLAB_CI_LOCAL, "gitlab-ci-local is not installed"
    ci = load_ci(repo / ".gitlab-ci.yml")
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    predefined = {
        "CI_COMMIT_BRANCH": branch,
        "CI_COMMIT_REF_NAME": branch,
        "CI_PIPELINE_SOURCE": "push",
    }
    seen = {**predefined, **variables}
    for name in unset:
        seen.pop(name, None)
    decided = workflow_variables(ci, seen)
    if decided is None:
        raise AssertionError(f"workflow:rules make no pipeline for {seen}")
    args = [
        GITLAB_CI_LOCAL,
        "--shell-isolation",
        "--force-shell-executor",
        "--no-artifacts-to-source",
        "--no-color",
        "--max-job-name-padding=0",
        *[f"--variable={k}={v}" for k, v in {**variables, **decided}.items()],
        *[f"--unset-variable={name}" for name in unset],
        *[f"--manual={name}" for name in manual],
        *jobs,
    ]
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
