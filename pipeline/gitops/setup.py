"""`crispml ci setup`: check a job's variables, point DVC and the score store at its environment.

Which score store a job writes to is decided here, from the pipeline's kind, and never
from a variable named CRISPML_STORE_URL (GitLab's precedence makes that name unsafe):

* GitLab resolves a variable defined in several places by precedence; project (and
  group, instance) CI/CD variables rank above every variable written in .gitlab-ci.yml,
  `rules:variables` included. A project-level CRISPML_STORE_URL (the obvious way to give
  dev its PostgreSQL store) would therefore override the throwaway store a merge request
  job sets in YAML, and every review would write its scores into dev's real store.
* So each environment's store has its own variable, CRISPML_STORE_URL_DEV, _QA, _PROD
  (qa and prod protected, so that only protected branches see them), and this step
  writes a small shell file that the job sources right after:

      crispml ci setup --env-file .crispml/ci.env
      . ./.crispml/ci.env

  It sets CRISPML_STORE_URL for the rest of the job: a SQLite file inside the job for a
  merge request pipeline, whatever variables exist; `$CRISPML_STORE_URL_<ENV>` for an
  environment branch; and it unsets CRISPML_STORE_URL when that variable is missing (the
  store committed in environments/<env>/params.yaml applies). A CRISPML_STORE_URL that
  reached the job from elsewhere is overridden and reported. The file names the
  variable, never its value, so no secret is written to disk.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.environment import MIN_KEY_BYTES
from pipeline.errors import ConfigError
from pipeline.gitops.common import Runner, run, settings_for
from pipeline.redaction import redact_url

STORE_VARIABLE = "CRISPML_STORE_URL"
# A merge request's scores go to a file inside its job (relative to the repository).
REVIEW_STORE_URL = "sqlite:///data/store/review.db"
ENV_FILE = Path(".crispml") / "ci.env"


def remote_url_variable(remote: str) -> str:
    """The CI variable that overrides a DVC remote's URL: DVC_REMOTE_URL_<NAME>."""
    return "DVC_REMOTE_URL_" + "".join(c if c.isalnum() else "_" for c in remote).upper()


def store_url_variable(env: str) -> str:
    """The CI variable holding an environment's score store: CRISPML_STORE_URL_<ENV>."""
    return STORE_VARIABLE + "_" + "".join(c if c.isalnum() else "_" for c in env).upper()


def is_review(environ: Mapping[str, str]) -> bool:
    return environ.get("CI_PIPELINE_SOURCE") == "merge_request_event"


@dataclass(frozen=True)
class StoreChoice:
    """Where this job's scores go, as a line of shell and as words for the log."""

    shell: str
    described: str
    overridden: str | None = None


def choose_store(env: str, environ: Mapping[str, str]) -> StoreChoice:
    """The job's score store: isolated for a review, the environment's own otherwise."""
    stray = environ.get(STORE_VARIABLE)
    overridden = (
        f"{STORE_VARIABLE} was set for this job ({redact_url(stray)}) and is ignored: name an "
        f"environment's store {store_url_variable(env)}"
        if stray
        else None
    )
    if is_review(environ):
        return StoreChoice(
            f"export {STORE_VARIABLE}={shlex.quote(REVIEW_STORE_URL)}",
            f"{REVIEW_STORE_URL} (a merge request pipeline: a throwaway store inside the job)",
            overridden,
        )
    variable = store_url_variable(env)
    if environ.get(variable):
        return StoreChoice(
            f'export {STORE_VARIABLE}="${variable}"',
            f"{variable} ({redact_url(environ[variable])})",
            overridden,
        )
    return StoreChoice(
        f"unset {STORE_VARIABLE}",
        f"environments/{env}/params.yaml store.url ({variable} is not set)",
        overridden,
    )


def required_variables(settings, environ: Mapping[str, str]) -> list[str]:
    """Problems with the job's variables, each a sentence saying which one and why."""
    problems = []
    if not environ.get("MLFLOW_TRACKING_URI"):
        problems.append(
            "MLFLOW_TRACKING_URI is not set: a CI job must register into the team's MLflow "
            "(a CI/CD variable), not into a SQLite file that disappears with the job"
        )
    privacy = settings.environment.privacy
    key = environ.get(privacy.key_env, "")
    if privacy.pseudonymise_ids and not key:
        problems.append(
            f"{privacy.key_env} is not set: environment {settings.env!r} pseudonymises ids "
            "with a secret key; add it as a masked (and, for prod, protected) CI/CD variable"
        )
    elif privacy.pseudonymise_ids and len(key.encode("utf-8")) < MIN_KEY_BYTES:
        from pipeline.privacy import key_too_short

        problems.append(key_too_short(privacy.key_env, len(key.encode("utf-8"))))
    ci = settings.environment.ci
    store = store_url_variable(settings.env)
    if ci.require_store_url and not is_review(environ) and not environ.get(store):
        problems.append(
            f"{store} is not set: environment {settings.env!r} keeps its scores in the "
            "team's database (environments/<env>/params.yaml ci.require_store_url), not in a "
            "SQLite file that disappears with the job"
        )
    remote = remote_url_variable(settings.environment.dvc_remote)
    if ci.require_dvc_remote_url and not environ.get(remote):
        problems.append(
            f"{remote} is not set: environment {settings.env!r} versions its data in its own "
            "DVC remote (ci.require_dvc_remote_url), not in the embedded local folder"
        )
    return problems


def dvc_remotes(root: Path, runner: Runner = subprocess.run) -> dict[str, str]:
    out = run(["dvc", "remote", "list"], root, runner).stdout
    remotes = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if parts:
            remotes[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return remotes


def setup_job(
    root: Path,
    environ: Mapping[str, str],
    runner: Runner = subprocess.run,
    env_file: Path | None = None,
) -> dict:
    """Check the job's variables, point DVC at the environment's remote, choose the store.

    The remote's URL in `.dvc/config` is the embedded default (a local folder); CI
    replaces it with `DVC_REMOTE_URL_<REMOTE>` in `.dvc/config.local`, which Git ignores,
    so the working tree stays clean and bucket names never need a commit. With
    `env_file`, the shell lines that set the job's score store are written there.
    """
    settings = settings_for(root)
    problems = required_variables(settings, environ)
    if problems:
        raise ConfigError("this job cannot run:\n  " + "\n  ".join(problems))
    remote = settings.environment.dvc_remote
    remotes = dvc_remotes(settings.root, runner)
    if remote not in remotes:
        raise ConfigError(
            f"environments/{settings.env}/params.yaml names DVC remote {remote!r}, which "
            f".dvc/config does not define (it defines: {sorted(remotes)})"
        )
    variable = remote_url_variable(remote)
    url = environ.get(variable)
    if url:
        run(["dvc", "remote", "modify", "--local", remote, "url", url], settings.root, runner)
    run(["dvc", "remote", "default", "--local", remote], settings.root, runner)
    store = choose_store(settings.env, environ)
    if env_file is not None:
        path = env_file if env_file.is_absolute() else settings.root / env_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# written by `crispml ci setup`; source it: . ./"
            + str(env_file)
            + "\n"
            + store.shell
            + "\n",
            encoding="utf-8",
        )
    summary = {
        "environment": settings.env,
        "alias": settings.alias,
        "review": is_review(environ),
        "dvc_remote": remote,
        "dvc_remote_url_from": variable if url else ".dvc/config (no CI variable set)",
        "score_store": store.described,
        "tracking_uri": redact_url(environ.get("MLFLOW_TRACKING_URI", "")),
    }
    if store.overridden:
        summary["warning"] = store.overridden
    return summary


def reproduce_commands() -> list[list[str]]:
    """How CI reproduces an environment: the same three steps in every job that trains.

    1. data, features, model and metrics: restored from the environment's remote
       (outputs and run-cache) when nothing changed, recomputed otherwise;
    2. `register` always runs: registering is an act in MLflow, never replayed from a
       receipt (a committed reports/registered.json would otherwise skip it);
    3. score, label and verify follow the model that register decided on; they write to
       the score store, so they always run (`--no-run-cache`): restoring a receipt from
       the run-cache would skip the writes, and verify would find no labels.
    """
    return [
        ["dvc", "repro", "--pull", "report"],
        ["dvc", "repro", "--force", "--single-item", "register"],
        ["dvc", "repro", "--no-run-cache"],
    ]
