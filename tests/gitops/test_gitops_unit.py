"""pipeline.gitops without CI: promotion, rollback, the MR report and its note, job set-up.

The registry is a real MLflow on a SQLite file; GitLab is a small HTTP stub on loopback
that speaks the part of the REST API python-gitlab uses for merge request notes. The
fallback, lineage and artifact-hash tests (test_gitops_identity.py) use real models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from ci_harness import PROJECT, copy_project, git

from pipeline import gitops
from pipeline.errors import ConfigError, CrispError, GateFailed, ServiceUnavailable
from pipeline.registered import Registered

NAME = "crispml-fraud"
COMMIT = "a" * 40
OTHER = "b" * 40


# --------------------------------------------------------------------------- pure parts


def _receipt(**fields: Any) -> Registered:
    return Registered.parse({"model_name": NAME, "alias": "prod", **fields})


def test_decide_reads_registers_receipt() -> None:
    passed = _receipt(candidate_version=7, gate={"passed": True, "reasons": []})
    assert gitops.decide(passed) == gitops.Decision("candidate", "7", "7")
    fallback = _receipt(
        candidate_version="8",
        gate={"passed": False, "reasons": ["too low"]},
        fallback={
            "used": True,
            "version": "6",
            "from_alias": "qa",
            "comparison": {"reason": "@qa version 6 PR-AUC 0.81 vs @prod version 5 0.80"},
        },
        alias_seen={"alias": "prod", "version": "5"},
    )
    decision = gitops.decide(fallback)
    assert (decision.kind, decision.version, decision.from_alias) == ("fallback", "6", "qa")
    assert decision.gate_reasons == ["too low"]
    assert (decision.alias_seen, decision.alias_seen_recorded) == ("5", True)
    assert decision.fallback_evidence.startswith("@qa version 6 PR-AUC 0.81")
    refused = _receipt(
        candidate_version="9",
        gate={"passed": False, "reasons": ["too low"]},
        fallback={"used": False, "reason": "qa holds another commit"},
    )
    decision = gitops.decide(refused)
    assert (decision.kind, decision.version) == ("none", None)
    assert decision.fallback_reason == "qa holds another commit"
    assert decision.alias_seen_recorded is False


def test_receipt_is_typed_and_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "registered.json"
    with pytest.raises(CrispError, match="does not exist: run the register stage first"):
        Registered.load(path)
    path.write_text(json.dumps({"model_name": NAME, "alias": "dev", "gate": {"reasons": []}}))
    with pytest.raises(CrispError, match=r"gate\.passed: Field required"):
        Registered.load(path)
    receipt = _receipt(
        candidate_version=3,
        gate={"passed": False, "reasons": ["low"], "interval": [0.1, 0.2]},
        serving={"version": 2, "run_id": "r", "threshold": 0.5, "pr_auc": 0.7},
        newer_field="kept",
    )
    assert receipt.candidate_version == "3" and receipt.serving.version == "2"
    assert receipt.require_serving().threshold == 0.5
    assert receipt.gate.model_extra == {"interval": [0.1, 0.2]}
    receipt.write(path)
    again = Registered.load(path)
    assert again == receipt and json.loads(path.read_text())["newer_field"] == "kept"
    rejected = _receipt(candidate_version="4", gate={"passed": False, "reasons": ["low"]})
    assert (rejected.decision, rejected.decided_version) == ("none", None)
    with pytest.raises(GateFailed, match=r"version 4 was rejected \(low\)"):
        rejected.require_serving()


def _event(version: str, reason: str = "gate passed in prod") -> dict:
    return {"version": version, "reason": reason}


def test_serving_stack_replays_moves_and_rollbacks() -> None:
    history = [_event("1"), _event("2"), _event("3")]
    assert gitops.serving_stack(history) == ["1", "2", "3"]
    history.append(_event("2", "rollback: from version 3 to version 2"))
    assert gitops.serving_stack(history) == ["1", "2"]
    history.append(_event("1", "rollback: from version 2 to version 1"))
    assert gitops.serving_stack(history) == ["1"]
    history.append(_event("4"))
    history.append(_event("4", "gate passed again"))  # a re-run: no duplicate
    assert gitops.serving_stack(history) == ["1", "4"]


def test_remote_url_variable_names() -> None:
    assert gitops.remote_url_variable("prod") == "DVC_REMOTE_URL_PROD"
    assert gitops.remote_url_variable("team-s3") == "DVC_REMOTE_URL_TEAM_S3"


def test_messages_say_what_happened() -> None:
    base = {"alias": "prod", "commit": COMMIT, "candidate_version": "8", "reasons": ["PR-AUC low"]}
    promoted = gitops.promotion_message({**base, "status": "promoted", "version": "8"}, "prod")
    assert promoted.startswith("PROMOTED: @prod -> version 8")
    fallback = gitops.promotion_message(
        {**base, "status": "fallback", "version": "6", "from_alias": "qa"}, "prod"
    )
    assert fallback.startswith("FALLBACK: @prod -> version 6, the model @qa validated")
    assert "PR-AUC low" in fallback
    refused = gitops.promotion_message(
        {**base, "status": "not_promoted", "version": "5", "fallback_reason": "qa: other commit"},
        "prod",
    )
    assert refused.startswith("NOT PROMOTED: @prod stays on version 5")
    assert "qa: other commit" in refused


# --------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_counter = iter(range(1000))


@pytest.fixture
def alias_store(tmp_path: Path) -> Iterator[Any]:
    """The store keeping the alias history: a fresh SQLite file per test."""
    from pipeline.store import ScoreStore

    store = ScoreStore(f"sqlite:///{tmp_path / 'history.db'}")
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture
def model(registry: Any) -> str:
    """A fresh registered model per test, so aliases and histories do not leak."""
    name = f"{NAME}-{next(_counter)}"
    registry.create_registered_model(name)
    return name


def _version(client: Any, name: str, commit: str = COMMIT, env: str = "prod") -> str:
    made = client.create_model_version(
        name, source="/nonexistent/model", tags={"git_commit": commit, "environment": env}
    )
    return str(made.version)


def test_promote_moves_the_alias_once(registry: Any, alias_store: Any, model: str) -> None:
    version = _version(registry, model)
    decision = gitops.Decision("candidate", version, version)
    first = gitops.promote(
        registry, alias_store, model, "prod", "prod", decision, COMMIT, "ci:test"
    )
    assert first["status"] == "promoted" and first["moved_now"] is True
    again = gitops.promote(
        registry, alias_store, model, "prod", "prod", decision, COMMIT, "ci:test"
    )
    assert again["moved_now"] is False
    from pipeline.registry import alias_history

    history = alias_history(registry, alias_store, model, "prod")
    assert [e["version"] for e in history] == [version]
    assert history[0]["actor"] == "ci:test" and history[0]["reason"] == "gate passed in prod"


def test_promote_refuses_a_version_of_another_commit(
    registry: Any, alias_store: Any, model: str
) -> None:
    version = _version(registry, model, commit=OTHER)
    decision = gitops.Decision("candidate", version, version)
    with pytest.raises(CrispError, match="built from commit bbbbbbbbbbbb"):
        gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "ci:test")


def test_promote_refuses_a_candidate_of_another_environment(
    registry: Any, alias_store: Any, model: str
) -> None:
    version = _version(registry, model, env="qa")
    decision = gitops.Decision("candidate", version, version)
    with pytest.raises(CrispError, match="registered for environment 'qa', not 'prod'"):
        gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "ci:test")


def test_promote_fallback_and_refusal(registry: Any, alias_store: Any, model: str) -> None:
    served = _version(registry, model)
    gitops.promote(
        registry,
        alias_store,
        model,
        "prod",
        "prod",
        gitops.Decision("candidate", served, served),
        COMMIT,
        "t",
    )
    qa_model = _version(registry, model, env="qa")
    own = _version(registry, model)
    fallback = gitops.Decision("fallback", qa_model, own, ["low"], from_alias="qa")
    result = gitops.promote(registry, alias_store, model, "prod", "prod", fallback, COMMIT, "t")
    assert (result["status"], result["version"], result["previous"]) == (
        "fallback",
        qa_model,
        served,
    )
    assert result["version_environment"] == "qa"
    refused = gitops.promote(
        registry,
        alias_store,
        model,
        "prod",
        "prod",
        gitops.Decision("none", None, own, ["low"]),
        COMMIT,
        "t",
    )
    assert refused["status"] == "not_promoted" and refused["version"] == qa_model


def test_promote_refuses_when_the_alias_moved_since_the_gate(
    registry: Any, alias_store: Any, model: str
) -> None:
    """Compare-and-set: a concurrent pipeline's promotion makes this verdict stale."""
    from pipeline.registry import move_alias

    judged_against, candidate, concurrent = (_version(registry, model) for _ in range(3))
    move_alias(registry, alias_store, model, "prod", judged_against, reason="gate passed in prod")
    decision = gitops.Decision(
        "candidate", candidate, candidate, alias_seen=judged_against, alias_seen_recorded=True
    )
    move_alias(registry, alias_store, model, "prod", concurrent, reason="another pipeline")
    with pytest.raises(CrispError, match=rf"@prod held version {judged_against} when the gate"):
        gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "t")
    assert str(registry.get_model_version_by_alias(model, "prod").version) == concurrent
    # The holder the gate saw: the move goes through, once.
    move_alias(registry, alias_store, model, "prod", judged_against, reason="back")
    result = gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "t")
    assert result["moved_now"] is True and result["version"] == candidate
    # A re-run after its own move is not a conflict.
    again = gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "t")
    assert again["moved_now"] is False
    # An empty alias seen empty is fine; seen empty but held now is not.
    fresh = gitops.Decision("candidate", candidate, candidate, alias_seen_recorded=True)
    with pytest.raises(CrispError, match="held nothing when the gate"):
        gitops.promote(
            registry, alias_store, model, "prod", "prod", fresh, COMMIT, "t", challenger_alias="c"
        )


def test_promote_in_shadow_moves_the_challenger(
    registry: Any, alias_store: Any, model: str
) -> None:
    from pipeline.registry import alias_history, move_alias

    champion, candidate = _version(registry, model), _version(registry, model)
    move_alias(registry, alias_store, model, "prod", champion, reason="gate passed in prod")
    decision = gitops.Decision(
        "candidate", candidate, candidate, alias_seen=champion, alias_seen_recorded=True
    )
    result = gitops.promote(
        registry,
        alias_store,
        model,
        "prod",
        "prod",
        decision,
        COMMIT,
        "t",
        challenger_alias="prod-challenger",
    )
    assert (result["alias"], result["shadow"], result["champion_version"]) == (
        "prod-challenger",
        True,
        champion,
    )
    assert str(registry.get_model_version_by_alias(model, "prod").version) == champion
    assert str(registry.get_model_version_by_alias(model, "prod-challenger").version) == candidate
    event = alias_history(registry, alias_store, model, "prod-challenger")[-1]
    assert "challenger of @prod, in shadow" in event["reason"]
    message = gitops.promotion_message(result, "prod")
    assert message.startswith(f"PROMOTED: @prod-challenger -> version {candidate}")
    assert "crispml shadow promote" in message
    # Once the champion, a re-run does not shadow it beside itself.
    move_alias(registry, alias_store, model, "prod", candidate, reason="shadow promote (manual)")
    registry.delete_registered_model_alias(model, "prod-challenger")
    seen_now = gitops.Decision(
        "candidate", candidate, candidate, alias_seen=candidate, alias_seen_recorded=True
    )
    again = gitops.promote(
        registry,
        alias_store,
        model,
        "prod",
        "prod",
        seen_now,
        COMMIT,
        "t",
        challenger_alias="prod-challenger",
    )
    assert again["moved_now"] is False
    assert registry_holder(registry, model, "prod-challenger") is None
    variables = gitops.deploy_variables(model, "prod", result)
    assert variables["CRISPML_MODEL_URI"] == f"models:/{model}@prod"
    assert variables["CRISPML_MODEL_VERSION"] == champion
    assert variables["CRISPML_CHALLENGER_URI"] == f"models:/{model}@prod-challenger"


def registry_holder(client: Any, name: str, alias: str) -> Any:
    from pipeline.registry import alias_holder

    return alias_holder(client, name, alias)


def test_promote_accepts_another_commit_of_the_same_lineage(
    registry: Any, alias_store: Any, model: str
) -> None:
    lineage = {"lineage.pipeline": "1" * 40, "lineage.params.yaml": "2" * 40}
    made = registry.create_model_version(
        model,
        source="/nonexistent/model",
        tags={"git_commit": OTHER, "environment": "qa", **lineage},
    )
    decision = gitops.Decision("fallback", str(made.version), "99", ["low"], from_alias="qa")
    result = gitops.promote(
        registry, alias_store, model, "prod", "prod", decision, COMMIT, "t", lineage=lineage
    )
    assert result["matched_by"] == "lineage" and result["status"] == "fallback"
    other = {**lineage, "lineage.pipeline": "3" * 40}
    with pytest.raises(
        CrispError, match=r"it differs in pipeline \(111111111111 vs 333333333333\)"
    ):
        gitops.promote(
            registry, alias_store, model, "qa", "prod", decision, COMMIT, "t", lineage=other
        )


def test_rollback_walks_back_and_keeps_the_history(
    registry: Any, alias_store: Any, model: str
) -> None:
    from pipeline.registry import alias_history, move_alias

    v1, v2, v3 = (_version(registry, model) for _ in range(3))
    for version in (v1, v2, v3):
        move_alias(registry, alias_store, model, "prod", version, reason="gate passed in prod")
    first = gitops.rollback(registry, alias_store, model, "prod", "cli:test", note="INC-1")
    assert (first["from"], first["to"]) == (v3, v2)
    second = gitops.rollback(registry, alias_store, model, "prod", "cli:test")
    assert (second["from"], second["to"]) == (v2, v1)
    history = alias_history(registry, alias_store, model, "prod")
    assert [e["version"] for e in history] == [v1, v2, v3, v2, v1]
    assert history[3]["reason"] == f"rollback: from version {v3} to version {v2} (INC-1)"
    with pytest.raises(CrispError, match="no earlier version"):
        gitops.rollback(registry, alias_store, model, "prod", "cli:test")
    explicit = gitops.rollback(registry, alias_store, model, "prod", "cli:test", to=v3)
    assert explicit["to"] == v3
    assert str(registry.get_model_version_by_alias(model, "prod").version) == v3


def test_rollback_refuses_when_the_alias_moved_behind_its_back(
    registry: Any, alias_store: Any, model: str
) -> None:
    from pipeline.registry import move_alias

    v1, v2, v3 = (_version(registry, model) for _ in range(3))
    move_alias(registry, alias_store, model, "prod", v1, reason="gate passed in prod")
    move_alias(registry, alias_store, model, "prod", v2, reason="gate passed in prod")
    registry.set_registered_model_alias(model, "prod", v3)  # not through crispml
    with pytest.raises(CrispError, match="moved outside crispml"):
        gitops.rollback(registry, alias_store, model, "prod", "cli:test")
    with pytest.raises(CrispError, match="cannot be used"):
        gitops.rollback(registry, alias_store, model, "prod", "cli:test", to="999")


def test_history_table_marks_the_holder() -> None:
    text = gitops.format_history(
        [{"at": "t1", "version": "1", "previous": None, "actor": "ci", "reason": "gate passed"}],
        "1",
    )
    assert "gate passed" in text and text.endswith("current holder: version 1")
    assert gitops.format_history([], None) == "(no recorded moves)"
    marked = gitops.format_history(
        [
            {"version": "2", "previous": "1", "actor": "x", "reason": "found", "kind": "outside"},
            {"version": None, "previous": "2", "actor": "ci", "reason": "gone", "kind": "move"},
        ],
        None,
    )
    assert "[outside] found" in marked and marked.endswith("current holder: none")


def _concurrent_move_on_lookup(
    monkeypatch: pytest.MonkeyPatch, registry: Any, store: Any, model: str, to: str
) -> None:
    """Another pipeline moves @prod while this one is between its look and its move.

    Both promote and rollback look a version up (`get_model_version`) after reading the
    holder and before moving: the one moment a concurrent promotion can slip in.
    """
    from pipeline.registry import move_alias

    real = registry.get_model_version

    def lookup(name: str, version: str) -> Any:
        monkeypatch.setattr(registry, "get_model_version", real)
        move_alias(registry, store, model, "prod", to, reason="the other pipeline")
        return real(name, version)

    monkeypatch.setattr(registry, "get_model_version", lookup)


def test_promote_refuses_a_promotion_that_landed_after_its_look(
    registry: Any, alias_store: Any, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receipt's check passed; the move itself must compare and set as well."""
    from pipeline.registry import AliasMoved, alias_history, move_alias

    champion, candidate, other = (_version(registry, model) for _ in range(3))
    move_alias(registry, alias_store, model, "prod", champion, reason="gate passed in prod")
    decision = gitops.Decision(
        "candidate", candidate, candidate, alias_seen=champion, alias_seen_recorded=True
    )
    _concurrent_move_on_lookup(monkeypatch, registry, alias_store, model, other)
    with pytest.raises(AliasMoved, match=f"expected version {champion}, found version {other}"):
        gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "t")
    assert str(registry_holder(registry, model, "prod").version) == other
    events = alias_history(registry, alias_store, model, "prod")
    assert [(e["previous"], e["version"]) for e in events] == [(None, champion), (champion, other)]


def test_promote_records_commit_and_pipeline(registry: Any, alias_store: Any, model: str) -> None:
    from pipeline.registry import alias_history

    version = _version(registry, model)
    decision = gitops.Decision("candidate", version, version)
    url = "https://gitlab.example/g/p/-/pipelines/42"
    gitops.promote(registry, alias_store, model, "prod", "prod", decision, COMMIT, "ci:u", url)
    event = alias_history(registry, alias_store, model, "prod")[-1]
    assert (event["git_commit"], event["pipeline"], event["actor"]) == (COMMIT, url, "ci:u")


def test_rollback_refuses_when_a_promotion_lands_meanwhile(
    registry: Any, alias_store: Any, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Computed from v2, the rollback must not undo a v3 it never saw."""
    from pipeline.registry import AliasMoved, alias_history, move_alias

    v1, v2, v3 = (_version(registry, model) for _ in range(3))
    for version in (v1, v2):
        move_alias(registry, alias_store, model, "prod", version, reason="gate passed in prod")
    _concurrent_move_on_lookup(monkeypatch, registry, alias_store, model, v3)
    with pytest.raises(AliasMoved, match=f"expected version {v2}, found version {v3}"):
        gitops.rollback(registry, alias_store, model, "prod", "cli:test")
    assert str(registry_holder(registry, model, "prod").version) == v3
    assert [e["version"] for e in alias_history(registry, alias_store, model, "prod")] == [
        v1,
        v2,
        v3,
    ]


def test_alias_history_and_rollback_commands_use_the_environment_store(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crispml alias history|rollback` read and write the history in the store of
    environments/<env>/params.yaml (or CRISPML_STORE_URL), never in MLflow tags."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from pipeline import registry as aliases
    from pipeline.cli import cli
    from pipeline.config import load_settings

    settings = load_settings(project)
    uri = settings.tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.registration.model_name
    client.create_registered_model(name)
    versions = [
        str(client.create_model_version(name, source="/nonexistent").version) for _ in range(2)
    ]
    with aliases.history_store(settings) as store:
        for version in versions:
            aliases.move_alias(client, store, name, "dev", version, reason="gate passed in dev")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for variable in ("CI", "CRISPML_STORE_URL"):
        monkeypatch.delenv(variable, raising=False)
    runner = CliRunner()
    shown = runner.invoke(cli, ["alias", "history", "--root", str(project), "--json"])
    assert shown.exit_code == 0, shown.output
    printed = json.loads(shown.output)
    assert printed["current"] == versions[1]
    assert [e["version"] for e in printed["history"]] == versions
    monkeypatch.setenv("CI", "true")  # a CI job that skipped `crispml ci setup`
    rolled = runner.invoke(cli, ["alias", "rollback", "--root", str(project), "--reason", "INC-9"])
    assert rolled.exit_code == 0, rolled.output
    assert f"version {versions[1]} -> version {versions[0]}" in rolled.output
    assert "CRISPML_STORE_URL is not set in this CI job" in rolled.output
    assert str(client.get_model_version_by_alias(name, "dev").version) == versions[0]
    with aliases.history_store(settings) as store:
        events = aliases.alias_history(client, store, name, "dev")
    assert events[-1]["reason"] == (
        f"rollback: from version {versions[1]} to version {versions[0]} (INC-9)"
    )
    assert not any(
        key.startswith("crispml.alias_history") for key in client.get_registered_model(name).tags
    )
    table = runner.invoke(cli, ["alias", "history", "--root", str(project)])
    assert table.exit_code == 0 and "(INC-9)" in table.output
    assert table.output.rstrip().endswith(f"current holder: version {versions[0]}")


# --------------------------------------------------------------------------- merge request report


def _fake_dvc(calls: list[list[str]]) -> Any:
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess:
        calls.append(list(args))
        if args[:3] == ["dvc", "metrics", "diff"]:
            table = (
                "| Path | Metric | dev | workspace | Change |\n"
                "| reports/metrics.json | pr_auc | 0.8 | 0.9 | 0.1 |"
            )
            return subprocess.CompletedProcess(args, 0, table, "")
        if args[:3] == ["dvc", "params", "diff"]:
            return subprocess.CompletedProcess(args, 1, "", "ERROR: unexpected error")
        return subprocess.CompletedProcess(args, 0, "", "")

    return run


def _write_reports(root: Path) -> None:
    reports = root / "reports"
    reports.mkdir(parents=True)
    gate = {
        "passed": False,
        "reasons": ["PR-AUC 0.3 is below the minimum 0.5"],
        "version": "4",
        "candidate_pr_auc": 0.3,
        "champion_pr_auc": 0.8,
        "champion_version": "3",
    }
    (reports / "gate.json").write_text(json.dumps(gate))
    registered = {
        "model_name": NAME,
        "alias": "dev",
        "candidate_version": "4",
        "gate": gate,
        "fallback": None,
    }
    (reports / "registered.json").write_text(json.dumps(registered))
    verify = {
        "model_version": "3",
        "overall": {"drift_share": 0.25, "drifted_columns": 7, "pr_auc": 0.7, "labeled_rows": 900},
        "frames": {"10": {"drift_share": 0.3}, "9": {"drift_share": 0.1}},
        "gate": {
            "passed": True,
            "reasons": [],
            "max_drift_share": 0.5,
            "max_pr_auc_drop": 0.3,
            "on_failure": "warn",
        },
        "html": ["reports/verify/all_drift.html"],
    }
    (reports / "verify.json").write_text(json.dumps(verify))


def test_mr_report_holds_gate_diffs_drift_and_links(tmp_path: Path) -> None:
    _write_reports(tmp_path)
    calls: list[list[str]] = []
    environ = {
        "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/x",
        "CI_COMMIT_SHA": COMMIT,
        "CRISPML_REPRODUCE_JOB_URL": "https://gitlab.example/p/-/jobs/42",
    }
    body = gitops.build_mr_report(tmp_path, "dev", "origin/dev", environ, runner=_fake_dvc(calls))
    assert body.startswith(gitops.REPORT_MARKER)
    assert "**FAILED** in environment `dev`" in body
    assert "- PR-AUC 0.3 is below the minimum 0.5" in body
    assert "keeps its current model" in body
    assert "| reports/metrics.json | pr_auc | 0.8 | 0.9 | 0.1 |" in body
    assert "_`dvc params diff` failed: ERROR: unexpected error_" in body
    assert body.index("| 9 |") < body.index("| 10 |"), "frames in numeric order"
    assert (
        "(https://gitlab.example/p/-/jobs/42/artifacts/file/reports/verify/all_drift.html)" in body
    )
    assert [
        "dvc",
        "metrics",
        "diff",
        "origin/dev",
        "--md",
        "--targets",
        "reports/metrics.json",
    ] in calls


def test_target_ref_prefers_the_fetched_branch(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "dev")
    git(
        tmp_path,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@x.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
    )
    environ = {"CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "dev"}
    assert gitops.resolve_target_ref(tmp_path, environ) == "dev"
    git(tmp_path, "update-ref", "refs/remotes/origin/dev", "HEAD")
    assert gitops.resolve_target_ref(tmp_path, environ) == "origin/dev"
    with pytest.raises(ConfigError, match="no target to diff against"):
        gitops.resolve_target_ref(tmp_path, {})


class _GitLab(BaseHTTPRequestHandler):
    """Just enough of GitLab's REST API v4 for python-gitlab's merge request notes."""

    notes: ClassVar[list[dict]] = []
    requests: ClassVar[list[tuple[str, str]]] = []
    token = "glpat-test"

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _authorised(self) -> bool:
        if self.headers.get("PRIVATE-TOKEN") != self.token:
            self._reply(401, {"message": "401 Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path))
        if not self._authorised():
            return
        if self.path.startswith("/api/v4/user"):
            self._reply(200, {"id": 5, "username": "crispml-bot"})
        elif self.path.startswith("/api/v4/projects/12/merge_requests/3/notes"):
            self._reply(200, self.notes)
        else:
            self._reply(404, {"message": "404 Not Found"})

    def do_POST(self) -> None:
        self.requests.append(("POST", self.path))
        if not self._authorised():
            return
        note = {
            "id": 100 + len(self.notes),
            "body": self._body()["body"],
            "system": False,
            "author": {"id": 5},
        }
        self.notes.append(note)
        self._reply(201, note)

    def do_PUT(self) -> None:
        self.requests.append(("PUT", self.path))
        if not self._authorised():
            return
        note_id = int(self.path.rsplit("/", 1)[1].split("?")[0])
        note = next(n for n in self.notes if n["id"] == note_id)
        note["body"] = self._body()["body"]
        self._reply(200, note)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def gitlab_stub() -> Iterator[str]:
    _GitLab.notes = [
        {"id": 1, "body": "LGTM", "system": False, "author": {"id": 9}},
        {
            "id": 2,
            "body": f"{gitops.REPORT_MARKER} quoted by a person",
            "system": False,
            "author": {"id": 9},
        },
    ]
    _GitLab.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GitLab)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_report_note_is_created_then_updated_in_place(gitlab_stub: str) -> None:
    first = f"{gitops.REPORT_MARKER}\nfirst"
    action, note_id = gitops.post_note(first, gitlab_stub, "glpat-test", "12", "3")
    assert action == "created"
    second = f"{gitops.REPORT_MARKER}\nsecond"
    assert gitops.post_note(second, gitlab_stub, "glpat-test", "12", "3") == ("updated", note_id)
    bodies = [n["body"] for n in _GitLab.notes]
    assert bodies == ["LGTM", f"{gitops.REPORT_MARKER} quoted by a person", second]


def test_posting_failure_is_service_unavailable(gitlab_stub: str) -> None:
    with pytest.raises(ServiceUnavailable, match="could not post the report to merge request !3"):
        gitops.post_note("x", gitlab_stub, "wrong-token", "12", "3")


# --------------------------------------------------------------------------- job set-up


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    repo = copy_project(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "dev")
    return repo


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not on PATH")
def test_setup_checks_variables_and_points_dvc_at_the_environment_remote(
    project_repo: Path,
) -> None:
    from pipeline.config import load_settings

    subprocess.run(
        ["crispml", "env", "use", "qa"], cwd=project_repo, check=True, capture_output=True
    )
    with pytest.raises(ConfigError) as error:
        gitops.setup_job(project_repo, {})
    assert "MLFLOW_TRACKING_URI is not set" in str(error.value)
    assert "CRISPML_PSEUDONYMISATION_KEY is not set" in str(error.value)
    with pytest.raises(ConfigError, match="holds 5 bytes: a pseudonymisation key needs"):
        gitops.setup_job(project_repo, {"CRISPML_PSEUDONYMISATION_KEY": "short"})
    # qa is shared: no throwaway SQLite store, no pushes to the embedded local remote.
    assert "CRISPML_STORE_URL_QA is not set" in str(error.value)
    assert "DVC_REMOTE_URL_QA is not set" in str(error.value)

    environ = {
        "MLFLOW_TRACKING_URI": "https://user:secret@mlflow.example",
        "CRISPML_PSEUDONYMISATION_KEY": "k" * 32,
        "DVC_REMOTE_URL_QA": "s3://bucket/crispml/qa",
        "CRISPML_STORE_URL_QA": "postgresql+psycopg://ci:store-secret@db.example/qa",
    }
    summary = gitops.setup_job(project_repo, environ)
    assert summary["dvc_remote"] == "qa" and summary["dvc_remote_url_from"] == "DVC_REMOTE_URL_QA"
    # SQLAlchemy's rendering: the user stays (it tells which account), the password goes.
    assert summary["tracking_uri"] == "https://user:***@mlflow.example"
    assert "store-secret" not in json.dumps(summary)
    local = (project_repo / ".dvc" / "config.local").read_text()
    assert "s3://bucket/crispml/qa" in local and "remote = qa" in local
    assert "s3://bucket" not in (project_repo / ".dvc" / "config").read_text()
    assert load_settings(project_repo).environment.dvc_remote == "qa"


def _sourced_store(env_file: Path, environ: dict[str, str]) -> str:
    """CRISPML_STORE_URL in a shell that sourced the file, as the CI job's shell does."""
    done = subprocess.run(
        ["bash", "-c", f'. "{env_file}" && printf %s "${{CRISPML_STORE_URL-<unset>}}"'],
        env={"PATH": os.environ["PATH"], **environ},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not on PATH")
@pytest.mark.parametrize("env", ["dev", "qa", "prod"])
def test_a_review_never_reaches_an_environment_store(project_repo: Path, env: str) -> None:
    """Isolation by construction: whatever store variables a project defines (and they
    rank above anything .gitlab-ci.yml sets), a merge request job writes to its own file."""
    subprocess.run(
        ["crispml", "env", "use", env], cwd=project_repo, check=True, capture_output=True
    )
    real = "postgresql+psycopg://ci:secret@db.example/crispml_dev"
    environ = {
        "MLFLOW_TRACKING_URI": "sqlite:///x.db",
        "CRISPML_PSEUDONYMISATION_KEY": "k" * 32,
        "CRISPML_STORE_URL": real,  # a project-level variable: the trap
        "CRISPML_STORE_URL_DEV": real,
        "CRISPML_STORE_URL_QA": real,
        "CRISPML_STORE_URL_PROD": real,
        "DVC_REMOTE_URL_QA": "s3://bucket/crispml/qa",
        "DVC_REMOTE_URL_PROD": "s3://bucket/crispml/prod",
        "CI_PIPELINE_SOURCE": "merge_request_event",
    }
    summary = gitops.setup_job(project_repo, environ, env_file=Path(".crispml/ci.env"))
    assert summary["review"] is True
    assert summary["score_store"].startswith(gitops.REVIEW_STORE_URL)
    assert (
        "CRISPML_STORE_URL was set for this job (postgresql+psycopg://ci:***@db"
        in summary["warning"]
    )
    assert "secret" not in summary["warning"]
    env_file = project_repo / ".crispml" / "ci.env"
    assert "secret" not in env_file.read_text()
    assert _sourced_store(env_file, environ) == gitops.REVIEW_STORE_URL

    branch = {**environ, "CI_PIPELINE_SOURCE": "push", "CRISPML_STORE_URL": "sqlite:///stray.db"}
    summary = gitops.setup_job(project_repo, branch, env_file=Path(".crispml/ci.env"))
    variable = f"CRISPML_STORE_URL_{env.upper()}"
    assert summary["score_store"].startswith(variable)
    assert "secret" not in env_file.read_text(), "the file names the variable, not its value"
    assert _sourced_store(env_file, branch) == real
    del branch[variable]
    if env == "dev":
        gitops.setup_job(project_repo, branch, env_file=Path(".crispml/ci.env"))
        assert _sourced_store(env_file, branch) == "<unset>", "the committed store applies"
    else:  # a shared environment never falls back to a SQLite file inside the job
        with pytest.raises(ConfigError, match=f"{variable} is not set"):
            gitops.setup_job(project_repo, branch, env_file=Path(".crispml/ci.env"))
    assert git(project_repo, "check-ignore", ".crispml/ci.env").returncode == 0


def test_every_environment_names_a_remote_that_exists() -> None:
    """environments/<env>/params.yaml `dvc_remote` must be a remote in .dvc/config."""
    from pipeline.config import load_settings

    config = (PROJECT / ".dvc" / "config").read_text()
    for env in ("dev", "qa", "prod"):
        remote = load_settings(PROJECT, env=env).environment.dvc_remote
        assert f"['remote \"{remote}\"']" in config, f"{env}: remote {remote!r} not in .dvc/config"


def test_overlays_keep_secrets_out_and_prod_falls_back_to_qa() -> None:
    from pipeline.config import load_settings

    qa, prod = load_settings(PROJECT, env="qa"), load_settings(PROJECT, env="prod")
    for settings in (qa, prod):
        assert settings.environment.privacy.pseudonymise_ids is True
        assert settings.environment.privacy.key_env == "CRISPML_PSEUDONYMISATION_KEY"
        assert settings.environment.gates.verify.on_failure == "fail"
    assert prod.environment.registry.fallback_alias == "qa"
    assert prod.environment.data.sample_fraction == 1.0
    assert qa.environment.data.sample_fraction < 1.0
    assert (
        prod.environment.gates.registration.min_pr_auc
        >= qa.environment.gates.registration.min_pr_auc
    )


# --------------------------------------------------------------------------- kustomize overlays

BASE = PROJECT / "environments" / "base" / "kustomize" / "kustomization.yaml"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.skipif(not BASE.is_file(), reason="environments/base/kustomize is not written yet")
@pytest.mark.parametrize(
    ("env", "replicas", "autoscaled"), [("dev", 1, False), ("qa", 2, False), ("prod", 3, True)]
)
def test_overlay_renders(env: str, replicas: int, autoscaled: bool) -> None:
    import yaml

    done = subprocess.run(
        ["kubectl", "kustomize", str(PROJECT / "environments" / env / "kustomize")],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert done.returncode == 0, done.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(done.stdout) if d}
    deployment = docs["Deployment"]
    assert deployment["metadata"]["namespace"] == f"crispml-{env}"
    assert deployment["spec"]["replicas"] == replicas
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    # The base Deployment turns this pod label into CRISPML_ENV: the alias to follow.
    assert deployment["spec"]["template"]["metadata"]["labels"]["crispml.io/environment"] == env
    assert ("HorizontalPodAutoscaler" in docs) is autoscaled


def test_the_cli_has_every_gitops_command() -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    runner = CliRunner()
    for args, words in (
        (["alias", "--help"], ("promote", "history", "rollback")),
        (["ci", "--help"], ("setup", "local", "continuous-training")),
        (["mr-report", "--help"], ("--target-ref",)),
        (["ci", "local", "--help"], ("--mr", "--manual", "--state", "--dry-run")),
    ):
        done = runner.invoke(cli, args)
        assert done.exit_code == 0, done.output
        for word in words:
            assert word in done.output, (args, word)
