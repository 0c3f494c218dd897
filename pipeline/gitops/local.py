"""`crispml ci local`: run the real .gitlab-ci.yml on this machine with gitlab-ci-local.

gitlab-ci-local (npm, 4.60.0 on Node 20, needs rsync) runs jobs in the shell, each in a
fresh copy of the committed tree. Run bare, it gets several things wrong for this
project, which this command sets for you:

* it ignores `workflow:rules`, so the variables they set (CRISPML_ENV, the pipeline's
  name) are evaluated here from the real file and passed on;
* a merge request pipeline needs CI_PIPELINE_SOURCE=merge_request_event, CI_COMMIT_BRANCH
  unset and the CI_MERGE_REQUEST_* variables;
* artifacts must not be copied back into the working tree (`--no-artifacts-to-source`):
  a job's reports/ and dvc.lock would overwrite yours;
* each job's build folder is thrown away, so MLflow (its database and, through a
  pre-created experiment, its artifact location), the DVC remotes and the environment's
  score store live in a state folder outside the build folders (default
  `.crispml/ci-local/`, ignored by Git and by gitlab-ci-local's copy);
* the jobs of the pipeline are named, so that only they run (`--job`), and manual jobs
  run only when asked (`--manual`); `rules:changes` is not evaluated (it needs an origin
  remote, and the one job that has it, ci-image, builds in GitLab only).

    crispml ci local dev                  # dev's branch pipeline: reproduce, gate, promote
    crispml ci local --mr dev             # this branch as a merge request into dev
    crispml ci local prod --manual promote:prod-champion --job promote:prod-champion
    crispml ci local dev --dry-run        # print the gitlab-ci-local command, run nothing
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, CrispError

GITLAB_CI_LOCAL_VERSION = "4.60.0"
STATE_DIR = Path(".crispml") / "ci-local"
BRANCH_JOBS = ("reproduce", "gate", "promote")
REVIEW_JOBS = ("reproduce", "gate", "mr-report")
SCHEDULE_JOBS = ("continuous-training",)


# --------------------------------------------------------------------------- workflow:rules


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
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the run


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"`git {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _slug(ref: str) -> str:
    """CI_COMMIT_REF_SLUG as GitLab makes it."""
    return re.sub(r"[^a-z0-9]+", "-", ref.lower()).strip("-")[:63].rstrip("-")


def pipeline_variables(
    root: Path,
    env: str | None,
    mr_target: str | None,
    source: str = "push",
    iid: int = 1,
) -> tuple[dict[str, str], list[str]]:
    """The predefined variables of the pipeline a person means, and those to unset."""
    current = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if mr_target:
        base = ""
        if (
            subprocess.run(
                ["git", "rev-parse", "--verify", "--quiet", mr_target],
                cwd=root,
                capture_output=True,
            ).returncode
            == 0
        ):
            base = _git(root, "merge-base", "HEAD", mr_target)
        variables = {
            "CI_PIPELINE_SOURCE": "merge_request_event",
            "CI_MERGE_REQUEST_IID": str(iid),
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": current,
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": mr_target,
            "CI_COMMIT_REF_NAME": current,
            "CI_COMMIT_REF_SLUG": _slug(current),
        }
        if base:
            variables["CI_MERGE_REQUEST_DIFF_BASE_SHA"] = base
        return variables, ["CI_COMMIT_BRANCH"]
    if not env:
        raise ConfigError("name the environment branch (crispml ci local dev) or use --mr TARGET")
    # gitlab-ci-local takes the branch from the checkout and says "push"; only what
    # differs is overridden (it warns about every predefined variable set).
    variables = {} if source == "push" else {"CI_PIPELINE_SOURCE": source}
    if current != env:
        variables.update(
            CI_COMMIT_BRANCH=env, CI_COMMIT_REF_NAME=env, CI_COMMIT_REF_SLUG=_slug(env)
        )
    return variables, []


def _remotes(root: Path) -> list[str]:
    """The DVC remotes .dvc/config defines (read as text: no dvc call needed)."""
    config = root / ".dvc" / "config"
    if not config.is_file():
        return []
    return re.findall(r"""^\[\s*['"]?remote\s+"([^"]+)"['"]?\s*\]""", config.read_text(), re.M)


def state_variables(
    root: Path, state: Path, env: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """MLflow, DVC remotes, score store and key in `state`, unless the caller set them."""
    from pipeline.gitops.setup import remote_url_variable, store_url_variable

    state.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    out["MLFLOW_TRACKING_URI"] = environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{state / 'mlflow.db'}"
    )
    for remote in _remotes(root):
        variable = remote_url_variable(remote)
        out[variable] = environ.get(variable) or str(state / "dvc-remote" / remote)
    for name in ("dev", "qa", "prod"):
        variable = store_url_variable(name)
        out[variable] = environ.get(variable) or f"sqlite:///{state / f'store-{name}.db'}"
    key = environ.get("CRISPML_PSEUDONYMISATION_KEY")
    if not key:
        # A key for this machine's runs only, kept so that pseudonyms stay stable.
        path = state / "pseudonymisation.key"
        if not path.is_file():
            path.write_text(secrets.token_hex(32), encoding="utf-8")
            path.chmod(0o600)
        key = path.read_text(encoding="utf-8").strip()
    out["CRISPML_PSEUDONYMISATION_KEY"] = key
    return out


def ensure_experiment(tracking_uri: str, name: str, artifacts: Path) -> str:
    """Create the MLflow experiment with its artifacts in `artifacts` (outside any build).

    Left to the register stage inside a job, the artifact location would be the job's
    build folder, which gitlab-ci-local deletes: later jobs could not load the model.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        location = experiment.artifact_location
        if "/.gitlab-ci-local/builds/" in location:
            raise ConfigError(
                f"MLflow experiment {name!r} keeps its artifacts in a build folder "
                f"({location}), which gitlab-ci-local deletes; use a new --state folder"
            )
        return location
    artifacts.mkdir(parents=True, exist_ok=True)
    client.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
    return artifacts.resolve().as_uri()


def job_when(job: Mapping[str, Any], variables: Mapping[str, str]) -> str:
    """A job's `when` in a pipeline with these variables: "never" when its rules leave it
    out, else the matching rule's (or the job's) `when`. `rules:changes` is not judged."""
    rules = job.get("rules")
    if rules is None:
        return str(job.get("when", "on_success"))
    for rule in rules:
        if "if" in rule and not evaluate(rule["if"], variables):
            continue
        return str(rule.get("when", job.get("when", "on_success")))
    return "never"


def default_jobs(
    ci: Mapping[str, Any], env: str, review: bool, source: str, variables: Mapping[str, str]
) -> list[str]:
    """The jobs a person means: the pipeline's own, without lint and tests (run those
    with pytest), images (built by GitLab) and manual jobs (ask for them with --manual)."""
    if review:
        wanted = list(REVIEW_JOBS)
    elif source == "schedule":
        wanted = [*SCHEDULE_JOBS, "shadow-promote"]
    else:
        wanted = list(BRANCH_JOBS)
        if shutil.which("kubectl"):
            wanted.append(f"deploy:{env}")
    return [
        job
        for job in wanted
        if job in ci and job_when(ci[job], variables) not in ("never", "manual")
    ]


def build_command(
    root: Path,
    env: str | None,
    mr_target: str | None = None,
    *,
    source: str = "push",
    iid: int = 1,
    jobs: Sequence[str] = (),
    manual: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
    state: Path | None = None,
    environ: Mapping[str, str] | None = None,
    executable: str | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The gitlab-ci-local command line, and what it decided (for the log)."""
    environ = os.environ if environ is None else environ
    ci = load_ci(root / ".gitlab-ci.yml")
    predefined, unset = pipeline_variables(root, env, mr_target, source, iid)
    current = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    seen = {
        "CI_PIPELINE_SOURCE": "push",
        "CI_COMMIT_BRANCH": current,
        "CI_COMMIT_REF_NAME": current,
        **predefined,
        **(extra or {}),
    }
    for name in unset:
        seen.pop(name, None)
    decided = workflow_variables(ci, seen)
    if decided is None:
        raise ConfigError(f"workflow:rules of .gitlab-ci.yml make no pipeline for {predefined}")
    pipeline_env = decided.get("CRISPML_ENV") or env or ""
    if mr_target and env and env != pipeline_env:
        raise ConfigError(
            f"a merge request into {mr_target} runs in environment {pipeline_env}, not {env}"
        )
    state = (state or root / STATE_DIR).resolve()
    variables = {
        **state_variables(root, state, pipeline_env, {**environ, **(extra or {})}),
        **predefined,
        **(extra or {}),
        **decided,
    }
    chosen = list(jobs) or default_jobs(ci, pipeline_env, bool(mr_target), source, variables)
    unknown = [job for job in [*chosen, *manual] if job not in ci]
    if unknown:
        raise ConfigError(f".gitlab-ci.yml has no job {unknown}")
    args = [
        executable or shutil.which("gitlab-ci-local") or "gitlab-ci-local",
        "--shell-isolation",
        "--force-shell-executor",
        "--no-artifacts-to-source",
        # `rules:changes` (only the ci-image job has it) would need an origin remote to
        # diff against; the image is built by GitLab, never locally.
        "--evaluate-rule-changes=false",
        "--no-color",
        "--max-job-name-padding=0",
        *[f"--variable={k}={v}" for k, v in variables.items()],
        *[f"--unset-variable={name}" for name in unset],
        *[f"--manual={name}" for name in manual],
        *chosen,
    ]
    name = re.sub(
        r"\$([A-Za-z_][A-Za-z0-9_]*)",
        lambda m: variables.get(m.group(1), m.group(0)),
        decided.get("CRISPML_PIPELINE_NAME", ""),
    )
    plan = {
        "environment": pipeline_env,
        "pipeline": name,
        "jobs": chosen,
        "state": str(state),
        "tracking_uri": variables["MLFLOW_TRACKING_URI"],
    }
    return args, plan


def _shown(arg: str) -> str:
    """A command-line argument fit to print: secret-named variables and URL passwords hidden."""
    from pipeline.redaction import redact_url

    arg = re.sub(r"(KEY|PASSWORD|TOKEN|SECRET)=.*", r"\1=***", arg)
    variable = re.match(r"(--variable=[A-Za-z_][A-Za-z0-9_]*=)(.*://.*)", arg)
    return variable.group(1) + redact_url(variable.group(2)) if variable else arg


def run_local(
    root: Path,
    env: str | None,
    mr_target: str | None = None,
    *,
    dry_run: bool = False,
    echo=print,
    **options: Any,
) -> int:
    """Run the pipeline with gitlab-ci-local; its exit code (0: every job passed)."""
    from pipeline.config import load_settings

    executable = shutil.which("gitlab-ci-local")
    if executable is None and not dry_run:
        raise CrispError(
            f"gitlab-ci-local is not installed: npm install -g gitlab-ci-local@"
            f"{GITLAB_CI_LOCAL_VERSION} (Node 20), and rsync"
        )
    if shutil.which("rsync") is None and not dry_run:
        raise CrispError("gitlab-ci-local needs rsync (apt-get install rsync)")
    args, plan = build_command(root, env, mr_target, executable=executable, **options)
    settings = load_settings(root)
    state = Path(plan["state"])
    if not dry_run:
        ensure_experiment(
            plan["tracking_uri"], settings.registration.experiment, state / "mlartifacts"
        )
    echo(
        f"{plan['pipeline'] or 'pipeline'}: jobs {' '.join(plan['jobs'])} in environment "
        f"{plan['environment']}; MLflow, DVC remotes and stores in {state}"
    )
    shown = [_shown(a) for a in args]
    echo("$ " + " ".join(shown))
    if dry_run:
        return 0
    return subprocess.run(args, cwd=root).returncode
