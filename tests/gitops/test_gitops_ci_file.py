"""The CI file itself: valid for GitLab, and the right jobs in the right pipelines.

gitlab-ci-local ignores `workflow:rules`, so which pipelines exist (and the environment
each one runs in) is checked by evaluating the real rules here; which jobs a pipeline
holds is checked with gitlab-ci-local's own rule engine (`--list`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ci_harness import (
    GITLAB_CI_LOCAL,
    PROJECT,
    RuleSyntaxError,
    evaluate,
    git,
    load_ci,
    requires_gitlab_ci_local,
    workflow_variables,
)

CI_FILE = PROJECT / ".gitlab-ci.yml"


@pytest.mark.skipif(
    shutil.which("check-jsonschema") is None, reason="check-jsonschema is not installed"
)
def test_ci_file_validates_against_gitlab_schema() -> None:
    done = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.gitlab-ci", str(CI_FILE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_reproduce_job_runs_the_documented_commands() -> None:
    """The CI job and the scheduled retraining reproduce an environment the same way."""
    from pipeline.gitops import reproduce_commands

    script = load_ci(CI_FILE)["reproduce"]["script"]
    dvc_lines = [line for line in script if line.startswith("dvc repro")]
    assert dvc_lines == [" ".join(args) for args in reproduce_commands()]


def test_scripts_are_plain_strings() -> None:
    """A `: ` in an unquoted script line makes YAML read a mapping, not a command."""
    ci = load_ci(CI_FILE)
    for name, job in ci.items():
        if not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            for line in job.get(key) or []:
                assert isinstance(line, str), f"{name}.{key} has a non-string line: {line!r}"


@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        ('$A == "x"', {"A": "x"}, True),
        ('$A == "x"', {}, False),
        ('$A != "x"', {}, True),
        ("$A", {"A": ""}, False),
        ("$A", {"A": "1"}, True),
        ('$A == "x" && $B == "y"', {"A": "x", "B": "z"}, False),
        ('$A == "x" || $B == "y"', {"A": "q", "B": "y"}, True),
        ('($A == "x" || $B) && $C', {"B": "1", "C": "1"}, True),
        ("$A =~ /^(dev|qa)$/", {"A": "qa"}, True),
        ("$A !~ /^(dev|qa)$/", {"A": "prod"}, True),
    ],
)
def test_rule_evaluator(expression: str, variables: dict[str, str], expected: bool) -> None:
    assert evaluate(expression, variables) is expected


def test_rule_evaluator_refuses_what_it_does_not_know() -> None:
    with pytest.raises(RuleSyntaxError):
        evaluate("$A == 'x' and $B", {})


def _mr(target: str) -> dict[str, str]:
    return {
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": target,
        "CI_MERGE_REQUEST_IID": "7",
        "CI_COMMIT_REF_NAME": "feature/x",
    }


def _push(branch: str, source: str = "push") -> dict[str, str]:
    return {"CI_PIPELINE_SOURCE": source, "CI_COMMIT_BRANCH": branch, "CI_COMMIT_REF_NAME": branch}


@pytest.mark.parametrize(
    ("variables", "environment"),
    [
        (_mr("dev"), "dev"),
        (_mr("qa"), "qa"),
        (_mr("prod"), "prod"),
        (_push("dev"), "dev"),
        (_push("qa"), "qa"),
        (_push("prod"), "prod"),
        (_push("prod", "schedule"), "prod"),
        (_push("qa", "web"), "qa"),
        # A feature branch runs only as its merge request: no second, branch pipeline.
        (_push("feature/x"), None),
        ({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "v1", "CI_COMMIT_REF_NAME": "v1"}, None),
    ],
)
def test_workflow_rules_pick_pipelines_and_environment(
    variables: dict[str, str], environment: str | None
) -> None:
    decided = workflow_variables(load_ci(CI_FILE), variables)
    if environment is None:
        assert decided is None
    else:
        assert decided is not None and decided["CRISPML_ENV"] == environment


def _listed(
    repo: Path, branch: str, variables: dict[str, str], unset: tuple[str, ...] = ()
) -> dict:
    """gitlab-ci-local --list for one pipeline: job -> (when, allow_failure)."""
    git(repo, "checkout", "-q", "-B", branch)
    seen = {"CI_COMMIT_BRANCH": branch, "CI_PIPELINE_SOURCE": "push", **variables}
    for name in unset:
        seen.pop(name, None)
    decided = workflow_variables(load_ci(CI_FILE), seen)
    assert decided is not None
    args = [GITLAB_CI_LOCAL or "", "--list-csv", "--no-color"]
    args += [f"--variable={k}={v}" for k, v in {**variables, **decided}.items()]
    args += [f"--unset-variable={name}" for name in unset]
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {}
    for line in done.stdout.splitlines():
        cells = line.split(";")
        if len(cells) >= 5 and cells[0] != "name":
            jobs[cells[0]] = (cells[3], cells[4])
    return jobs


@requires_gitlab_ci_local
def test_jobs_in_each_pipeline(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(CI_FILE, repo / ".gitlab-ci.yml")
    git(repo, "init", "-q", "-b", "dev")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "ci")

    review = _listed(repo, "feature/x", _mr("dev"), unset=("CI_COMMIT_BRANCH",))
    assert set(review) == {"lint", "unit-tests", "reproduce", "gate", "mr-report"}
    assert review["gate"][1] == "false", "a failing model must fail the merge request"
    assert review["mr-report"][0] == "always"

    dev = _listed(repo, "dev", {})
    assert set(dev) == {
        "lint",
        "unit-tests",
        "reproduce",
        "service-image",
        "gate",
        "promote",
        "deploy:dev",
        "rollback",
    }
    assert dev["deploy:dev"][0] == "on_success"
    assert dev["rollback"][0] == "manual"

    qa = _listed(repo, "qa", {})
    assert "deploy:qa" in qa and "deploy:dev" not in qa and "deploy:prod" not in qa

    prod = _listed(repo, "prod", {})
    assert prod["deploy:prod"][0] == "manual"
    assert prod["gate"][1] == "true", "prod's promote job decides, with the QA fallback"
    assert "deploy:dev" not in prod and "mr-report" not in prod

    schedule = _listed(repo, "prod", {"CI_PIPELINE_SOURCE": "schedule"})
    assert set(schedule) == {"continuous-training"}


@requires_gitlab_ci_local
def test_jobs_run_the_commits_own_code(tmp_path: Path) -> None:
    """Where crispml is already installed, a job must still run the commit's package."""
    repo = tmp_path / "repo"
    (repo / "pipeline").mkdir(parents=True)
    shutil.copy2(CI_FILE, repo / ".gitlab-ci.yml")
    (repo / "pipeline" / "__init__.py").write_text("")
    (repo / "pipeline" / "cli.py").write_text(
        "def main() -> None:\n    print('this commit s pipeline package')\n"
    )
    git(repo, "init", "-q", "-b", "dev")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "ci")
    if shutil.which("crispml") is None:
        pytest.skip("crispml is not on PATH: nothing installed that could shadow the commit")
    args = [GITLAB_CI_LOCAL or "", "--shell-isolation", "--force-shell-executor", "--no-color"]
    args += ["--no-artifacts-to-source", "--variable=CRISPML_ENV=dev", "gate"]
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("this commit s pipeline package") == 2, done.stdout
