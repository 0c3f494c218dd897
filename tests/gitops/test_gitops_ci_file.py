"""The CI file itself: valid for GitLab, and the right jobs in the right pipelines.

gitlab-ci-local ignores `workflow:rules`, so which pipelines exist (and the environment
each one runs in) is checked by evaluating the real rules here; which jobs a pipeline
holds is checked with gitlab-ci-local's own rule engine (`--list`).
"""

from __future__ import annotations

import re
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

from pipeline.errors import ConfigError

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
    # gitlab-ci-local evaluates `rules:changes` against origin's default branch.
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")

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
    assert prod["promote:prod-champion"][0] == "manual", "@prod moves only when a person says"
    assert "deploy:dev" not in prod and "mr-report" not in prod
    assert "promote:prod-champion" not in qa and "promote:prod-champion" not in dev

    schedule = _listed(repo, "prod", {"CI_PIPELINE_SOURCE": "schedule"})
    assert set(schedule) == {"continuous-training", "shadow-promote"}
    assert set(_listed(repo, "dev", {"CI_PIPELINE_SOURCE": "schedule"})) == {"continuous-training"}

    # The jobs' image is rebuilt when what goes into it changes.
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    git(repo, "checkout", "-q", "-B", "feature/deps")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "deps")
    review = _listed(repo, "feature/deps", _mr("dev"), unset=("CI_COMMIT_BRANCH",))
    assert "ci-image" in review


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
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")  # for `rules:changes`
    if shutil.which("crispml") is None:
        pytest.skip("crispml is not on PATH: nothing installed that could shadow the commit")
    args = [GITLAB_CI_LOCAL or "", "--shell-isolation", "--force-shell-executor", "--no-color"]
    args += ["--no-artifacts-to-source", "--variable=CRISPML_ENV=dev", "gate"]
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("this commit s pipeline package") == 2, done.stdout


# --------------------------------------------------------------------------- what the jobs do


def _jobs(ci: dict) -> dict[str, dict]:
    return {name: job for name, job in ci.items() if isinstance(job, dict) and "script" in job}


def _lines(job: dict) -> list[str]:
    return [*(job.get("before_script") or []), *(job.get("script") or [])]


def test_no_job_takes_its_store_from_a_variable_named_crispml_store_url() -> None:
    """A project-level CRISPML_STORE_URL outranks anything this file sets (rules:variables
    included), so the file must not rely on that name: `crispml ci setup` decides."""
    ci = load_ci(CI_FILE)
    for name, job in _jobs(ci).items():
        assert "CRISPML_STORE_URL" not in (job.get("variables") or {}), name
        for rule in job.get("rules") or []:
            assert "CRISPML_STORE_URL" not in (rule.get("variables") or {}), name
        lines = _lines(job)
        for i, line in enumerate(lines):
            if line.startswith("crispml ci setup"):
                assert "--env-file .crispml/ci.env" in line, f"{name}: {line}"
                assert lines[i + 1] == ". ./.crispml/ci.env", f"{name} must source the file next"
        uses_store = any(
            line.startswith(
                ("dvc repro", "crispml ci continuous-training", "crispml shadow promote")
            )
            for line in lines
        )
        if uses_store:
            assert any(line.startswith("crispml ci setup") for line in lines), name
    assert "CRISPML_STORE_URL" not in (ci.get("variables") or {})


def test_jobs_that_move_or_show_an_alias_use_the_environment_store() -> None:
    ci = load_ci(CI_FILE)
    for name, job in _jobs(ci).items():
        lines = _lines(job)
        if any(line.startswith(("crispml alias", "crispml shadow promote")) for line in lines):
            setup = [i for i, line in enumerate(lines) if line.startswith("crispml ci setup")]
            first = next(
                i
                for i, line in enumerate(lines)
                if line.startswith(("crispml alias", "crispml shadow promote"))
            )
            assert setup and setup[0] < first, name


def test_alias_movers_share_one_resource_group_per_branch() -> None:
    ci = load_ci(CI_FILE)
    group = "crispml-$CI_COMMIT_REF_SLUG"
    for name in (
        "reproduce",
        "promote",
        "promote:prod-champion",
        "rollback",
        "continuous-training",
        "shadow-promote",
    ):
        assert ci[name]["resource_group"] == group, name


def test_jobs_run_in_the_pinned_ci_image() -> None:
    """The image's tag is the hash of what goes into it: a dependency change renames it."""
    import hashlib

    ci = load_ci(CI_FILE)
    inputs = ("pyproject.toml", "Dockerfile", "requirements.lock", "requirements-dev.lock")
    digest = hashlib.sha256(b"".join((PROJECT / name).read_bytes() for name in inputs)).hexdigest()[
        :12
    ]
    assert ci["variables"]["CRISPML_CI_IMAGE_TAG"] == f"deps-{digest}", (
        "pyproject.toml, Dockerfile or a lock file changed: set CRISPML_CI_IMAGE_TAG to "
        f"deps-{digest} in .gitlab-ci.yml (the ci-image job builds it)"
    )
    assert ci["default"]["image"] == "$CRISPML_CI_IMAGE"
    for name in ("gate", "promote", "rollback", "reproduce"):
        assert "image" not in ci[name], f"{name} must use the default CI image"
    build = " ".join(ci["ci-image"]["script"])
    assert "--target ci" in build and '--destination "$CRISPML_CI_IMAGE"' in build
    assert ci["ci-image"]["stage"] == ".pre"
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert "AS ci" in dockerfile
    assert re.search(r"ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+", dockerfile)
    # The service image stays the default target: the ci stage is not the last one.
    assert dockerfile.rindex("FROM ") > dockerfile.index("AS ci")


def test_deploy_image_is_maintained_and_pinned() -> None:
    image = load_ci(CI_FILE)[".deploy"]["image"]["name"]
    assert "bitnami" not in image
    assert re.fullmatch(r"alpine/k8s:\d+\.\d+\.\d+", image), image


FAKE_KUBECTL = """#!/bin/sh
# Records every call's arguments; keeps what an env file handed to it held.
printf '%s\\n' "$*" >> "$KUBECTL_LOG"
for arg in "$@"; do
  case "$arg" in
    --from-env-file=*) cat "${arg#--from-env-file=}" >> "$KUBECTL_SECRETS" ;;
  esac
done
case "$*" in *"apply -f -"*) cat > /dev/null ;; esac
exit 0
"""


def test_deploy_hands_secrets_to_kubectl_in_a_file_never_as_arguments(tmp_path: Path) -> None:
    """Arguments of a process are visible to every user of the runner (`ps`, /proc)."""
    script = next(line for line in load_ci(CI_FILE)[".deploy"]["script"] if "create secret" in line)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    planted = {
        "MLFLOW_TRACKING_URI": "https://ml:planted-mlflow-pw@mlflow.example",
        "CRISPML_STORE_URL_PROD": "postgresql+psycopg://app:planted-store-pw@db/prod",
        "CRISPML_API_TOKEN": "planted-api-token",
        "CRISPML_PSEUDONYMISATION_KEY": "planted-pseudonymisation-key-0123456789abcdef",
        "AWS_SECRET_ACCESS_KEY": "planted-aws-secret",
        "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password",
    }
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "KUBE_CONTEXT": "test-cluster",
        "CRISPML_ENV": "prod",
        "KUBECTL_LOG": str(tmp_path / "calls.log"),
        "KUBECTL_SECRETS": str(tmp_path / "secret.env"),
        **planted,
    }
    subprocess.run(["sh", "-euc", script], env=env, check=True, cwd=tmp_path)
    calls = (tmp_path / "calls.log").read_text()
    assert "create secret generic crispml-service" in calls
    for name, value in planted.items():
        secret = value.split("@")[0].rsplit(":", 1)[-1] if "@" in value else value
        assert secret not in calls, f"{name} reached kubectl's command line"
    handed = dict(line.split("=", 1) for line in (tmp_path / "secret.env").read_text().splitlines())
    assert handed["CRISPML_STORE_URL"] == planted["CRISPML_STORE_URL_PROD"]
    for name in planted.keys() - {"CRISPML_STORE_URL_PROD"}:
        assert handed[name] == planted[name]
    # The folder with the values is gone once the secret exists.
    assert {p.name for p in tmp_path.iterdir()} == {"bin", "calls.log", "secret.env"}


def test_a_merge_request_never_writes_the_environment_remote(tmp_path: Path) -> None:
    """Whoever can push a branch must not be able to plant outputs that an environment
    branch's `dvc repro --pull` would later restore as its own."""
    script = next(line for line in load_ci(CI_FILE)["reproduce"]["script"] if "dvc push" in line)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$DVC_LOG"\n')
    dvc.chmod(0o755)
    pushed = {}
    for source in ("merge_request_event", "push", "web"):
        log = tmp_path / f"{source}.log"
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DVC_LOG": str(log)}
        env["CI_PIPELINE_SOURCE"] = source
        subprocess.run(["sh", "-euc", script], env=env, check=True, cwd=tmp_path)
        pushed[source] = log.read_text() if log.exists() else ""
    assert pushed["merge_request_event"] == ""
    assert pushed["push"] == pushed["web"] == "push --run-cache\n"


def test_prod_promotes_to_shadow_first() -> None:
    ci = load_ci(CI_FILE)
    champion = ci["promote:prod-champion"]
    assert champion["rules"][-1] == {
        "if": '$CI_COMMIT_BRANCH == "prod"',
        "when": "manual",
        "allow_failure": True,
    }
    assert (
        'crispml shadow promote --env "$CRISPML_ENV" --manual --reason "$CI_PIPELINE_URL"'
        in champion["script"]
    )
    assert ci["shadow-promote"]["script"][-2] == 'crispml shadow promote --env "$CRISPML_ENV"'


@pytest.mark.skipif(shutil.which("dvc") is None, reason="the test repository needs dvc")
def test_ci_local_builds_the_command_a_person_gets_wrong(tmp_path: Path) -> None:
    from ci_harness import copy_project

    from pipeline.gitops.local import build_command, ensure_experiment

    repo = copy_project(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "feature/x")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "x")
    git(repo, "branch", "dev")
    state = tmp_path / "state"
    args, plan = build_command(repo, None, "dev", iid=4, state=state, environ={})
    assert plan["environment"] == "dev" and plan["jobs"] == ["reproduce", "gate", "mr-report"]
    for flag in (
        "--shell-isolation",
        "--force-shell-executor",
        "--no-artifacts-to-source",
        "--unset-variable=CI_COMMIT_BRANCH",
        "--variable=CI_PIPELINE_SOURCE=merge_request_event",
        "--variable=CI_MERGE_REQUEST_TARGET_BRANCH_NAME=dev",
        "--variable=CI_MERGE_REQUEST_SOURCE_BRANCH_NAME=feature/x",
        "--variable=CI_MERGE_REQUEST_IID=4",
        "--variable=CRISPML_ENV=dev",
        f"--variable=MLFLOW_TRACKING_URI=sqlite:///{state.resolve()}/mlflow.db",
        f"--variable=DVC_REMOTE_URL_DEV={state.resolve()}/dvc-remote/dev",
    ):
        assert flag in args, flag
    assert args[-3:] == ["reproduce", "gate", "mr-report"]
    key = (state / "pseudonymisation.key").read_text()
    assert f"--variable=CRISPML_PSEUDONYMISATION_KEY={key}" in args

    args, plan = build_command(
        repo,
        "prod",
        manual=["promote:prod-champion"],
        jobs=["promote:prod-champion"],
        state=state,
        environ={"MLFLOW_TRACKING_URI": "sqlite:////team/mlflow.db"},
    )
    assert "--variable=CRISPML_ENV=prod" in args and "--variable=CI_COMMIT_BRANCH=prod" in args
    assert "--variable=MLFLOW_TRACKING_URI=sqlite:////team/mlflow.db" in args
    assert "--manual=promote:prod-champion" in args and args[-1] == "promote:prod-champion"
    assert not any(a.startswith("--unset-variable") for a in args)
    with pytest.raises(ConfigError, match="has no job"):
        build_command(repo, "dev", jobs=["nope"], state=state, environ={})
    with pytest.raises(ConfigError, match="runs in environment dev, not qa"):
        build_command(repo, "qa", "dev", state=state, environ={})

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    location = ensure_experiment(uri, "crispml", state / "mlartifacts")
    assert location == (state / "mlartifacts").resolve().as_uri()
    assert ensure_experiment(uri, "crispml", tmp_path / "elsewhere") == location
