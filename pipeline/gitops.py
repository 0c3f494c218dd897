"""GitOps around the DVC pipeline: what CI does for a branch, a merge request or a schedule.

The pipeline itself (`dvc repro`) knows nothing about Git branches. This module holds the
few acts that belong to an environment's CI rather than to a stage:

* `crispml ci setup`: point DVC at the active environment's remote (URL from a CI
  variable, so bucket names and keys stay out of Git) and refuse to start when a variable
  the environment needs is missing, before twenty minutes of training are spent.
* `crispml alias promote`: move the environment's alias to the version the `register`
  stage decided on (the candidate when its gate passed, in prod the QA-validated model of
  the same commit when it did not). Promotion is the act of an environment branch's
  pipeline, never of a merge request, so it is a job of its own.
* `crispml alias history` / `crispml alias rollback`: read the alias history that
  `pipeline.registry.move_alias` keeps, and move an alias back without losing it.
* `crispml mr-report`: the Markdown a reviewer reads (params and metrics diff against the
  target branch, gate verdict, drift), kept as a job artifact and posted as one merge
  request note that later pipelines update in place.
* `crispml ci continuous-training`: the scheduled job. It scores new frames with the
  serving model, imports labels, verifies, and retrains only when the verify gate fails.

Everything heavy (MLflow, python-gitlab) is imported inside functions, so that importing
this module (which `crispml --help` does) costs nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from pipeline.errors import ConfigError, CrispError, GateFailed, ServiceUnavailable

if TYPE_CHECKING:
    from pipeline.config import Settings

# The merge request note carries this marker, so each pipeline updates the report's own
# note instead of adding one more.
REPORT_MARKER = "<!-- crispml:mr-report -->"
# Alias history events whose reason starts with this are rollbacks; the history is
# replayed with them to find the version served before the current one.
ROLLBACK_PREFIX = "rollback"
TOKEN_VARIABLE = "CRISPML_GITLAB_TOKEN"
PROMOTION_FILE = Path("reports") / "promotion.json"
DEPLOY_ENV_FILE = Path("deploy.env")
CT_FILE = Path("reports") / "continuous-training.json"

Runner = Callable[..., subprocess.CompletedProcess]


# --------------------------------------------------------------------------- helpers


def _run(
    args: Sequence[str], root: Path, runner: Runner = subprocess.run, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command in the repository; a failure names the command and its stderr."""
    try:
        done = runner(list(args), cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        raise CrispError(f"`{args[0]}` is not installed or not on PATH") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout or "").strip()
        raise CrispError(f"`{' '.join(args)}` failed with exit code {done.returncode}: {detail}")
    return done


def _settings(root: Path | None, env: str | None = None) -> Settings:
    from pipeline.config import find_root, load_settings

    return load_settings(find_root(root), env=env)


def _client(settings: Settings) -> Any:
    from pipeline import tracking

    return tracking.configure(settings)


def _short(commit: str | None) -> str:
    return (commit or "unknown")[:12]


def redact(url: str) -> str:
    """A URL fit for a log: user and password replaced, so a pasted log leaks nothing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def actor_from(environ: Mapping[str, str]) -> str:
    """Who moved an alias: the GitLab user and pipeline in CI, the login name elsewhere."""
    user = environ.get("GITLAB_USER_LOGIN") or environ.get("USER") or "unknown"
    pipeline = environ.get("CI_PIPELINE_ID")
    return f"ci:{user}:pipeline-{pipeline}" if pipeline else f"cli:{user}"


# --------------------------------------------------------------------------- ci setup


def remote_url_variable(remote: str) -> str:
    """The CI variable that overrides a DVC remote's URL: DVC_REMOTE_URL_<NAME>."""
    return "DVC_REMOTE_URL_" + "".join(c if c.isalnum() else "_" for c in remote).upper()


def required_variables(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Problems with the job's variables, each a sentence saying which one and why."""
    problems = []
    if not environ.get("MLFLOW_TRACKING_URI"):
        problems.append(
            "MLFLOW_TRACKING_URI is not set: a CI job must register into the team's MLflow "
            "(a CI/CD variable), not into a SQLite file that disappears with the job"
        )
    privacy = settings.environment.privacy
    if privacy.pseudonymise_ids and not environ.get(privacy.key_env):
        problems.append(
            f"{privacy.key_env} is not set: environment {settings.env!r} pseudonymises ids "
            "with a secret key; add it as a masked (and, for prod, protected) CI/CD variable"
        )
    return problems


def dvc_remotes(root: Path, runner: Runner = subprocess.run) -> dict[str, str]:
    out = _run(["dvc", "remote", "list"], root, runner).stdout
    remotes = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if parts:
            remotes[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return remotes


def setup_job(root: Path, environ: Mapping[str, str], runner: Runner = subprocess.run) -> dict:
    """Check the job's variables and point DVC at the active environment's remote.

    The remote's URL in `.dvc/config` is the embedded default (a local folder); CI
    replaces it with `DVC_REMOTE_URL_<REMOTE>` in `.dvc/config.local`, which Git ignores,
    so the working tree stays clean and bucket names never need a commit.
    """
    settings = _settings(root)
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
        _run(["dvc", "remote", "modify", "--local", remote, "url", url], settings.root, runner)
    _run(["dvc", "remote", "default", "--local", remote], settings.root, runner)
    return {
        "environment": settings.env,
        "alias": settings.alias,
        "dvc_remote": remote,
        "dvc_remote_url_from": variable if url else ".dvc/config (no CI variable set)",
        "tracking_uri": redact(environ.get("MLFLOW_TRACKING_URI", "")),
    }


# --------------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class Decision:
    """What the environment should serve after this pipeline, as `register` decided it."""

    kind: Literal["candidate", "fallback", "none"]
    version: str | None
    candidate_version: str | None
    gate_reasons: list[str] = field(default_factory=list)
    from_alias: str | None = None
    fallback_reason: str | None = None


def decide(registered: Mapping[str, Any]) -> Decision:
    """Read register's receipt (reports/registered.json): candidate, fallback, or nothing."""
    gate = registered.get("gate") or {}
    fallback = registered.get("fallback") or {}
    candidate = registered.get("candidate_version")
    candidate = None if candidate is None else str(candidate)
    reasons = list(gate.get("reasons") or [])
    if gate.get("passed"):
        return Decision("candidate", candidate, candidate)
    if fallback.get("used"):
        return Decision(
            "fallback", str(fallback["version"]), candidate, reasons, fallback.get("from_alias")
        )
    return Decision("none", None, candidate, reasons, fallback_reason=fallback.get("reason"))


def promote(
    client: Any,
    name: str,
    alias: str,
    env: str,
    decision: Decision,
    commit: str,
    actor: str,
    pipeline_url: str | None = None,
) -> dict:
    """Point `alias` at the decided version, once; refuse a version of another commit.

    Idempotent: when the alias already holds the version (a re-run, or a `register` that
    moved it itself) nothing is written, so the history gains no duplicate event.
    """
    from pipeline import registry

    holder = registry.alias_holder(client, name, alias)
    current = str(holder.version) if holder else None
    if decision.kind == "none" or decision.version is None:
        return {
            "status": "not_promoted",
            "alias": alias,
            "version": current,
            "candidate_version": decision.candidate_version,
            "reasons": decision.gate_reasons,
            "fallback_reason": decision.fallback_reason,
            "commit": commit,
        }
    version = client.get_model_version(name, decision.version)
    tagged = version.tags.get("git_commit")
    if tagged != commit:
        raise CrispError(
            f"refusing to point @{alias} at version {decision.version}: it was built from "
            f"commit {_short(tagged)}, this pipeline builds {_short(commit)} (a stale "
            "reports/registered.json?)"
        )
    if decision.kind == "candidate" and version.tags.get("environment") != env:
        raise CrispError(
            f"refusing to point @{alias} at version {decision.version}: it was registered "
            f"for environment {version.tags.get('environment')!r}, not {env!r}"
        )
    if decision.kind == "candidate":
        reason = f"gate passed in {env}"
    else:
        reason = (
            f"fallback: own model version {decision.candidate_version} failed its gate; "
            f"serving the @{decision.from_alias} model of this commit"
        )
    if pipeline_url:
        reason += f" ({pipeline_url})"
    moved = current != str(decision.version)
    if moved:
        registry.move_alias(client, name, alias, str(decision.version), reason=reason, actor=actor)
    return {
        "status": "promoted" if decision.kind == "candidate" else "fallback",
        "alias": alias,
        "version": str(decision.version),
        "previous": current,
        "moved_now": moved,
        "candidate_version": decision.candidate_version,
        "reasons": decision.gate_reasons,
        "from_alias": decision.from_alias,
        "version_environment": version.tags.get("environment"),
        "commit": commit,
    }


def promotion_message(result: Mapping[str, Any], env: str) -> str:
    """One line a person reads in the job log; FALLBACK and NOT PROMOTED say why."""
    alias, commit = result["alias"], _short(result.get("commit"))
    if result["status"] == "promoted":
        return (
            f"PROMOTED: @{alias} -> version {result['version']} (environment {env}, "
            f"commit {commit}); its gate passed"
        )
    if result["status"] == "fallback":
        return (
            f"FALLBACK: @{alias} -> version {result['version']}, the model "
            f"@{result['from_alias']} validated for commit {commit}, because {env}'s own "
            f"model (version {result['candidate_version']}) failed its gate: "
            + "; ".join(result.get("reasons") or ["(no reason recorded)"])
        )
    stays = f"stays on version {result['version']}" if result.get("version") else "holds no version"
    why = "; ".join(result.get("reasons") or ["(no reason recorded)"])
    extra = f" No fallback: {result['fallback_reason']}" if result.get("fallback_reason") else ""
    return (
        f"NOT PROMOTED: @{alias} {stays}; candidate version {result.get('candidate_version')} "
        f"of commit {commit} failed its gate: {why}.{extra}"
    )


def deploy_variables(name: str, alias: str, result: Mapping[str, Any]) -> dict[str, str]:
    """What the deploy job needs, as a GitLab dotenv report (artifacts:reports:dotenv)."""
    return {
        "CRISPML_MODEL_NAME": name,
        "CRISPML_MODEL_ALIAS": alias,
        "CRISPML_MODEL_URI": f"models:/{name}@{alias}",
        "CRISPML_MODEL_VERSION": str(result.get("version") or ""),
        "CRISPML_PROMOTION": str(result["status"]),
    }


# --------------------------------------------------------------------------- rollback


def serving_stack(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Replay the alias history: the versions that served, oldest first, newest last.

    A normal move pushes its version; a rollback pops the version it replaced, so rolling
    back twice walks two steps back instead of flipping between two versions.
    """
    stack: list[str] = []
    for event in history:
        version = str(event["version"])
        if str(event.get("reason", "")).startswith(ROLLBACK_PREFIX) and stack:
            stack.pop()
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def rollback(
    client: Any,
    name: str,
    alias: str,
    actor: str,
    to: str | None = None,
    note: str | None = None,
) -> dict:
    """Move `alias` back to the version that served before the current one (or to `to`)."""
    from mlflow.exceptions import MlflowException

    from pipeline import registry

    holder = registry.alias_holder(client, name, alias)
    if holder is None:
        raise CrispError(f"@{alias} of model {name!r} holds no version: nothing to roll back")
    current = str(holder.version)
    history = registry.alias_history(client, name, alias)
    stack = serving_stack(history)
    if to is None:
        if not stack or stack[-1] != current:
            raise CrispError(
                f"@{alias} holds version {current} but its history ends with "
                f"{stack[-1] if stack else 'nothing'} (moved outside crispml?); name the "
                "version to go back to with --to"
            )
        if len(stack) < 2:
            raise CrispError(f"@{alias} has served only version {current}: no earlier version")
        target = stack[-2]
    else:
        target = str(to)
        if target == current:
            raise CrispError(f"@{alias} already holds version {target}")
    try:
        client.get_model_version(name, target)
    except MlflowException as error:
        raise CrispError(f"version {target} of model {name!r} cannot be used: {error}") from None
    reason = f"{ROLLBACK_PREFIX}: from version {current} to version {target}"
    if note:
        reason += f" ({note})"
    event = registry.move_alias(client, name, alias, target, reason=reason, actor=actor)
    return {"alias": alias, "from": current, "to": target, "event": event}


def format_history(history: Sequence[Mapping[str, Any]], current: str | None) -> str:
    """The alias history as a table a person reads, newest last, the holder marked."""
    if not history:
        return "(no recorded moves)"
    rows = [("at", "version", "previous", "actor", "reason")]
    for event in history:
        rows.append(
            (
                str(event.get("at", "")),
                str(event.get("version", "")),
                str(event.get("previous") or "-"),
                str(event.get("actor", "")),
                str(event.get("reason", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    lines.append(f"current holder: version {current}" if current else "current holder: none")
    return "\n".join(lines)


# --------------------------------------------------------------------------- merge request report


def resolve_target_ref(
    root: Path,
    environ: Mapping[str, str],
    explicit: str | None = None,
    runner: Runner = subprocess.run,
) -> str:
    """The Git ref to diff against: the target branch as fetched, else the MR's base commit."""
    candidates = [explicit] if explicit else []
    branch = environ.get("CI_MERGE_REQUEST_TARGET_BRANCH_NAME")
    if branch:
        candidates += [f"origin/{branch}", branch]
    if environ.get("CI_MERGE_REQUEST_DIFF_BASE_SHA"):
        candidates.append(environ["CI_MERGE_REQUEST_DIFF_BASE_SHA"])
    for ref in candidates:
        done = _run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            root,
            runner,
            check=False,
        )
        if done.returncode == 0:
            return ref
    raise ConfigError(
        "no target to diff against: pass --target-ref, or run in a merge request pipeline "
        f"(tried: {candidates or 'nothing: CI_MERGE_REQUEST_TARGET_BRANCH_NAME is not set'})"
    )


def _dvc_diff(kind: str, ref: str, root: Path, runner: Runner, targets: Sequence[str] = ()) -> str:
    args = ["dvc", kind, "diff", ref, "--md"]
    if targets:
        args += ["--targets", *targets]
    done = _run(args, root, runner, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"_`dvc {kind} diff` failed: {detail[-1] if detail else 'no output'}_"
    text = done.stdout.strip()
    return text or f"_No {kind} changed against `{ref}`._"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _gate_section(gate: dict | None, registered: dict | None, env: str) -> list[str]:
    if gate is None:
        return [
            "### Gate",
            "",
            "**NOT AVAILABLE**: reports/gate.json is missing (did `register` run?).",
        ]
    verdict = "PASSED" if gate.get("passed") else "FAILED"
    lines = ["### Gate (register)", "", f"**{verdict}** in environment `{env}`."]
    lines.append("")
    lines.append("| | PR-AUC | version |")
    lines.append("|---|---|---|")
    lines.append(
        f"| candidate | {_fmt(gate.get('candidate_pr_auc'))} | {gate.get('version', '–')} |"
    )
    champion = gate.get("champion_version")
    lines.append(
        f"| champion (@{env}) | {_fmt(gate.get('champion_pr_auc'))} | {champion or 'none yet'} |"
    )
    for reason in gate.get("reasons") or []:
        lines.append(f"- {reason}")
    if registered is not None:
        decision = decide(registered)
        lines.append("")
        if decision.kind == "candidate":
            lines.append(
                f"If merged, the `{env}` pipeline will promote a model like this one to `@{env}`."
            )
        elif decision.kind == "fallback":
            lines.append(
                f"If merged, `@{env}` would fall back to the `@{decision.from_alias}` model."
            )
        else:
            lines.append(f"If merged as is, `@{env}` keeps its current model.")
    return lines


def _drift_section(verify: dict | None) -> list[str]:
    if verify is None:
        return [
            "### Drift and realised quality",
            "",
            "_reports/verify.json is missing (did `verify` run?)._",
        ]
    gate = verify.get("gate") or {}
    overall = verify.get("overall") or {}
    verdict = "PASSED" if gate.get("passed") else "FAILED"
    limits = (
        f"max drift share {_fmt(gate.get('max_drift_share'), 2)}, max PR-AUC drop "
        f"{_fmt(gate.get('max_pr_auc_drop'), 2)}, on failure: {gate.get('on_failure')}"
    )
    lines = [
        "### Drift and realised quality (reports/verify.json)",
        "",
        f"Verify gate: **{verdict}** ({limits}); model version {verify.get('model_version')}.",
    ]
    for reason in gate.get("reasons") or []:
        lines.append(f"- {reason}")
    lines += [
        "",
        "| frame | drift share | drifted columns | realised PR-AUC | labelled rows |",
        "|---|---|---|---|---|",
    ]
    frames = verify.get("frames") or {}
    rows = [("**all**", overall)] + [
        (frame, frames[frame]) for frame in sorted(frames, key=lambda f: (len(f), f))
    ]
    for frame, entry in rows:
        cells = (
            _fmt(entry.get("drift_share"), 3),
            _fmt(entry.get("drifted_columns")),
            _fmt(entry.get("pr_auc")),
            _fmt(entry.get("labeled_rows")),
        )
        lines.append(f"| {frame} | " + " | ".join(cells) + " |")
    return lines


def _reports_section(root: Path, verify: dict | None, environ: Mapping[str, str]) -> list[str]:
    job_url = environ.get("CRISPML_REPRODUCE_JOB_URL")
    html = list((verify or {}).get("html") or [])
    if not html:
        html = sorted(str(p.relative_to(root)) for p in (root / "reports").rglob("*.html"))
    lines = ["### Reports", ""]
    if job_url:
        lines.append(
            f"All reports are artifacts of the reproduce job: {job_url}/artifacts/browse/reports"
        )
        lines.append("")
        lines += [f"- [{path}]({job_url}/artifacts/file/{path})" for path in html]
    else:
        lines.append("Artifact paths of the reproduce job (`reports/`):")
        lines.append("")
        lines += [f"- `{path}`" for path in html]
    lines.append("- `reports/metrics.json`, `reports/plots/` (DVC plots), `dvc.lock`")
    return lines


def build_mr_report(
    root: Path,
    env: str,
    target_ref: str,
    environ: Mapping[str, str],
    runner: Runner = subprocess.run,
) -> str:
    """The merge request report as Markdown; starts with the marker that finds its note."""
    reports = root / "reports"
    gate, registered, verify = (
        _read(reports / "gate.json"),
        _read(reports / "registered.json"),
        _read(reports / "verify.json"),
    )
    source = (
        environ.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
        or environ.get("CI_COMMIT_REF_NAME")
        or "?"
    )
    commit = (
        environ.get("CI_COMMIT_SHA")
        or _run(["git", "rev-parse", "HEAD"], root, runner).stdout.strip()
    )
    pipeline = environ.get("CI_PIPELINE_URL")
    lines = [
        REPORT_MARKER,
        f"## CrispML report: `{source}` into `{target_ref}`",
        "",
        f"Retrained in environment `{env}` at commit `{_short(commit)}`"
        + (f" by pipeline {pipeline}" if pipeline else "")
        + ". The diffs compare this pipeline's results with what the target branch holds.",
        "",
        *_gate_section(gate, registered, env),
        "",
        f"### Metrics diff (model quality, against `{target_ref}`)",
        "",
        _dvc_diff("metrics", target_ref, root, runner, targets=["reports/metrics.json"]),
        "",
        "<details><summary>All metrics files</summary>",
        "",
        _dvc_diff("metrics", target_ref, root, runner),
        "",
        "</details>",
        "",
        f"### Params diff (against `{target_ref}`)",
        "",
        _dvc_diff("params", target_ref, root, runner),
        "",
        *_drift_section(verify),
        "",
        *_reports_section(root, verify, environ),
        "",
    ]
    return "\n".join(lines)


def post_note(
    body: str, server_url: str, token: str, project_id: str, mr_iid: str
) -> tuple[str, int]:
    """Create the report's note on the merge request, or update it where it already is."""
    import gitlab
    import requests

    try:
        gl = gitlab.Gitlab(server_url, private_token=token, timeout=30)
        gl.auth()
        me = getattr(gl.user, "id", None)
        mr = gl.projects.get(project_id, lazy=True).mergerequests.get(mr_iid, lazy=True)
        for note in mr.notes.list(iterator=True):
            if getattr(note, "system", False) or REPORT_MARKER not in (note.body or ""):
                continue
            if me is not None and getattr(note, "author", {}).get("id") != me:
                continue
            note.body = body
            note.save()
            return "updated", int(note.id)
        created = mr.notes.create({"body": body})
        return "created", int(created.id)
    except (gitlab.exceptions.GitlabError, requests.RequestException) as error:
        raise ServiceUnavailable(
            f"could not post the report to merge request !{mr_iid}: {error}"
        ) from None


# --------------------------------------------------------------------------- continuous training


def serving_receipt(client: Any, settings: Settings) -> dict:
    """reports/registered.json for the model the alias holds now, without registering.

    `score` and `verify` read the serving model from that file. The scheduled job scores
    new frames with what the environment serves, so it writes the same receipt `register`
    would write when no new version is proposed.
    """
    from pipeline import registry

    name, alias = settings.registration.model_name, settings.alias
    holder = registry.alias_holder(client, name, alias)
    if holder is None:
        raise CrispError(
            f"@{alias} holds no version of {name!r}: run the {settings.env} branch pipeline first"
        )
    tags = holder.tags
    return {
        "model_name": name,
        "alias": alias,
        "alias_moved": False,
        "candidate_version": None,
        "candidate_run_id": None,
        "fallback": None,
        "gate": {
            "passed": tags.get(f"gate.{settings.env}") == "passed",
            "reasons": [],
            "verdict": "serving",
        },
        "serving": {
            "version": holder.version,
            "run_id": holder.run_id,
            "threshold": float(tags["threshold"]),
            "pr_auc": float(tags["pr_auc"]) if "pr_auc" in tags else None,
            "git_commit": tags.get("git_commit"),
        },
        "tracking_uri": settings.tracking_uri.split("@")[-1],
        "source": "crispml ci continuous-training (serving receipt, no registration)",
    }


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


def continuous_training(
    root: Path,
    environ: Mapping[str, str],
    echo: Callable[[str], None],
    runner: Runner = subprocess.run,
) -> dict:
    """Score new frames with the serving model, label, verify; retrain if verify fails."""
    from pipeline import tracking
    from pipeline.io import write_json

    settings = _settings(root)
    client = _client(settings)

    def step(args: list[str], allowed: tuple[int, ...] = (0,)) -> int:
        echo("$ " + " ".join(args))
        done = runner(args, cwd=settings.root)
        if done.returncode not in allowed:
            raise CrispError(f"`{' '.join(args)}` failed with exit code {done.returncode}")
        return done.returncode

    # New frames: re-read the source (ingest is forced: a table or file may have grown
    # without any change DVC can see), then the privacy filter.
    step(["dvc", "repro", "--pull", "--force", "--single-item", "ingest"])
    step(["dvc", "repro", "--pull", "prepare"])
    write_json(settings.root / "reports" / "registered.json", serving_receipt(client, settings))
    for frame in settings.frames.score:
        step(["crispml", "score", "--frame", str(frame)])
    for frame in settings.frames.score:
        step(["crispml", "label", "--frame", str(frame)])
    verify_code = step(["crispml", "verify"], allowed=(0, GateFailed.exit_code))
    step(["crispml", "gate", "verify"], allowed=(0, GateFailed.exit_code))
    verify = _read(settings.root / "reports" / "verify.json") or {}
    passed = bool((verify.get("gate") or {}).get("passed")) and verify_code == 0
    result: dict[str, Any] = {
        "environment": settings.env,
        "serving_version": verify.get("model_version"),
        "verify_passed": passed,
        "verify_reasons": (verify.get("gate") or {}).get("reasons", []),
        "retrained": False,
    }
    if passed:
        version = verify.get("model_version")
        echo(f"MONITORED: @{settings.alias} version {version} passes the verify gate")
    else:
        echo("RETRAINING: the verify gate failed: " + "; ".join(result["verify_reasons"]))
        for args in reproduce_commands():
            step(args)
        registered = _read(settings.root / "reports" / "registered.json") or {}
        commit = tracking.git_commit(settings.root)
        promotion = promote(
            client,
            settings.registration.model_name,
            settings.alias,
            settings.env,
            decide(registered),
            commit,
            actor_from(environ),
            environ.get("CI_PIPELINE_URL"),
        )
        echo(promotion_message(promotion, settings.env))
        result.update(retrained=True, promotion=promotion)
    write_json(settings.root / CT_FILE, result)
    return result


# --------------------------------------------------------------------------- commands


ROOT = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository root (default: the nearest folder above with params.yaml).",
)
ENV = click.option(
    "--env",
    "env",
    default=None,
    help="Environment whose alias to use (default: the active one in params.yaml).",
)


def _fail(error: CrispError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


@click.group("alias")
def alias_group() -> None:
    """Promote, show and roll back an environment's registry alias (@dev, @qa, @prod)."""


@alias_group.command("promote")
@ROOT
@ENV
def alias_promote(root: Path | None, env: str | None) -> None:
    """Move the alias to the version `register` decided on (CI's promote job).

    Exit 5 when nothing of this commit may serve (own gate failed and no fallback).
    Writes reports/promotion.json and deploy.env (a GitLab dotenv report).
    """
    from pipeline import tracking
    from pipeline.io import read_json, write_json

    try:
        settings = _settings(root, env)
        path = settings.root / "reports" / "registered.json"
        if not path.is_file():
            raise CrispError(f"{path} does not exist: run the register stage first")
        registered = read_json(path)
        if registered.get("model_name") != settings.registration.model_name:
            raise CrispError(f"{path} is about model {registered.get('model_name')!r}")
        if registered.get("alias") != settings.alias:
            raise CrispError(
                f"{path} was produced for @{registered.get('alias')}, not @{settings.alias}: "
                f"was the pipeline run with `crispml env use {settings.env}`?"
            )
        client = _client(settings)
        commit = tracking.git_commit(settings.root)
        result = promote(
            client,
            settings.registration.model_name,
            settings.alias,
            settings.env,
            decide(registered),
            commit,
            actor_from(os.environ),
            os.environ.get("CI_PIPELINE_URL"),
        )
        write_json(settings.root / PROMOTION_FILE, result)
        variables = deploy_variables(settings.registration.model_name, settings.alias, result)
        (settings.root / DEPLOY_ENV_FILE).write_text(
            "".join(f"{k}={v}\n" for k, v in variables.items()), encoding="utf-8"
        )
        message = promotion_message(result, settings.env)
        if result["status"] == "not_promoted":
            click.echo(message, err=True)
            sys.exit(GateFailed.exit_code)
        click.echo(message)
    except CrispError as error:
        _fail(error)


@alias_group.command("history")
@ROOT
@ENV
@click.option("--json", "as_json", is_flag=True, help="Print the raw history as JSON.")
def alias_history_command(root: Path | None, env: str | None, as_json: bool) -> None:
    """Show who moved the alias, when, to which version and why (oldest first)."""
    from pipeline import registry

    try:
        settings = _settings(root, env)
        client = _client(settings)
        name, alias = settings.registration.model_name, settings.alias
        history = registry.alias_history(client, name, alias)
        holder = registry.alias_holder(client, name, alias)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "alias": alias,
                        "current": holder.version if holder else None,
                        "history": history,
                    },
                    indent=2,
                )
            )
            return
        click.echo(f"{name}@{alias}")
        click.echo(format_history(history, holder.version if holder else None))
    except CrispError as error:
        _fail(error)


@alias_group.command("rollback")
@ROOT
@ENV
@click.option(
    "--to", "to", default=None, help="Version to go back to (default: the one before the current)."
)
@click.option("--reason", default=None, help="Why, for the history (an incident number, say).")
def alias_rollback(root: Path | None, env: str | None, to: str | None, reason: str | None) -> None:
    """Move the alias back to the previous version; the history keeps every move.

    A running service polls the alias and loads the version within its reload interval.
    """
    try:
        settings = _settings(root, env)
        client = _client(settings)
        result = rollback(
            client,
            settings.registration.model_name,
            settings.alias,
            actor_from(os.environ),
            to,
            reason,
        )
        click.echo(
            f"ROLLED BACK: @{result['alias']} version {result['from']} -> version {result['to']}"
        )
    except CrispError as error:
        _fail(error)


@click.command("mr-report")
@ROOT
@click.option(
    "--target-ref", default=None, help="Git ref to diff against (default: the MR's target branch)."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("mr-report.md"),
    show_default=True,
)
@click.option(
    "--post/--no-post",
    default=None,
    help=f"Post to the merge request (default: when {TOKEN_VARIABLE} is set).",
)
def mr_report(root: Path | None, target_ref: str | None, output: Path, post: bool | None) -> None:
    """Write the merge request report (params/metrics diff, gates, drift) and post it.

    The file is always written first, so the job artifact exists even when posting fails
    (exit 6). Posting updates the report's own note, found by its marker.
    """
    try:
        settings = _settings(root)
        ref = resolve_target_ref(settings.root, os.environ, target_ref)
        body = build_mr_report(settings.root, settings.env, ref, os.environ)
        path = output if output.is_absolute() else settings.root / output
        path.write_text(body, encoding="utf-8")
        click.echo(f"report written to {path}")
        token = os.environ.get(TOKEN_VARIABLE)
        if post is None:
            post = bool(token)
        if not post:
            click.echo(f"not posted ({TOKEN_VARIABLE} is not set)")
            return
        missing = [
            v
            for v in ("CI_SERVER_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID")
            if not os.environ.get(v)
        ]
        if not token:
            missing.insert(0, TOKEN_VARIABLE)
        if missing:
            raise ConfigError(f"cannot post the report: {', '.join(missing)} not set")
        action, note_id = post_note(
            body,
            os.environ["CI_SERVER_URL"],
            token or "",
            os.environ["CI_PROJECT_ID"],
            os.environ["CI_MERGE_REQUEST_IID"],
        )
        click.echo(f"merge request note {note_id} {action}")
    except CrispError as error:
        _fail(error)


@click.group("ci")
def ci_group() -> None:
    """Steps of the GitLab CI jobs (see .gitlab-ci.yml)."""


@ci_group.command("setup")
@ROOT
def ci_setup(root: Path | None) -> None:
    """Check the job's CI variables and point DVC at the active environment's remote."""
    from pipeline.config import find_root

    try:
        summary = setup_job(find_root(root), os.environ)
        click.echo(json.dumps(summary, indent=2))
    except CrispError as error:
        _fail(error)


@ci_group.command("continuous-training")
@ROOT
def ci_continuous_training(root: Path | None) -> None:
    """Scheduled job: score new frames, import labels, verify; retrain when verify fails."""
    from pipeline.config import find_root

    try:
        result = continuous_training(find_root(root), os.environ, click.echo)
        promotion = result.get("promotion") or {}
        if result["retrained"] and promotion.get("status") == "not_promoted":
            sys.exit(GateFailed.exit_code)
    except CrispError as error:
        _fail(error)


def add_commands(cli: click.Group) -> None:
    """Attach the GitOps commands to the `crispml` group (called once from pipeline.cli)."""
    for command in (alias_group, mr_report, ci_group):
        cli.add_command(command)
