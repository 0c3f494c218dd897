"""`crispml mr-report`: the Markdown a reviewer reads on a merge request.

Params and metrics diff against the target branch, the gate verdict, drift and realised
quality, and links to the reproduce job's reports. It is always kept as a job artifact
and posted as one merge request note that later pipelines update in place
(`pipeline.gitops.gitlab_api`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, CrispError
from pipeline.gitops.common import Runner, read_json_or_none, run, short
from pipeline.gitops.promotion import decide
from pipeline.registered import Registered

# The merge request note carries this marker, so each pipeline updates the report's own
# note instead of adding one more.
REPORT_MARKER = "<!-- crispml:mr-report -->"


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
        done = run(
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
    done = run(args, root, runner, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"_`dvc {kind} diff` failed: {detail[-1] if detail else 'no output'}_"
    text = done.stdout.strip()
    return text or f"_No {kind} changed against `{ref}`._"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _gate_section(gate: dict | None, registered: Registered | None, env: str) -> list[str]:
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
    gate, verify = (
        read_json_or_none(reports / "gate.json"),
        read_json_or_none(reports / "verify.json"),
    )
    try:
        registered = Registered.load(reports / "registered.json")
    except CrispError:
        registered = None
    source = (
        environ.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
        or environ.get("CI_COMMIT_REF_NAME")
        or "?"
    )
    commit = (
        environ.get("CI_COMMIT_SHA")
        or run(["git", "rev-parse", "HEAD"], root, runner).stdout.strip()
    )
    pipeline = environ.get("CI_PIPELINE_URL")
    lines = [
        REPORT_MARKER,
        f"## CrispML report: `{source}` into `{target_ref}`",
        "",
        f"Retrained in environment `{env}` at commit `{short(commit)}`"
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
