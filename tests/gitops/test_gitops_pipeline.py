"""The GitOps flow end to end: the real .gitlab-ci.yml, run by `crispml ci local`.

One throwaway repository lives through the whole module, in the order a team works, on
the shipped data size and the shipped gates (no gate is relaxed here: the register gate
is a paired bootstrap, and the gate rows hold enough positives for it to mean something):

1. a merge request into dev retrains, gates and writes its report, and its scores stay
   out of dev's store even though a store variable that would outrank the CI file is set;
2. dev, then qa after `git merge dev`, then prod after `git merge qa` reproduce, gate,
   promote their alias and deploy; prod promotes to @prod-challenger (shadow), and the
   manual job promote:prod-champion makes it @prod;
3. a worse model forced through to prod fails prod's gate, and prod does not fall back
   to the @qa model, which was built from other params;
4. after the incident a new model is promoted in dev; a re-run of the same commit
   reuses its registered version instead of registering an identical model; the manual
   rollback job moves @dev back to the version that served before;
5. the schedule runs continuous training in dev, on dev's store.

The jobs run against the team stack (`crispml stack up`, pipeline/stack.py), started for
the module: they register into one MLflow server on PostgreSQL with its artifacts in an
S3 bucket, push to and pull from each environment's DVC remote in S3 (moto's server),
and write each environment's scores into its own PostgreSQL database, as a team's CI
does with its real services. Tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_harness import (
    PipelineRun,
    artifact,
    copy_project,
    edit,
    git,
    requires_gitlab_ci_local,
    run_pipeline,
)

from pipeline.redaction import redact_url

# The stack's PostgreSQL: the test server (CI has one at 127.0.0.1:5432).
POSTGRES_URL = os.environ.get("CRISPML_TEST_DATABASE_URL") or None

pytestmark = [
    pytest.mark.slow,
    requires_gitlab_ci_local,
    pytest.mark.skipif(
        shutil.which("crispml") is None or shutil.which("dvc") is None,
        reason="the shell jobs need `crispml` and `dvc` on PATH (activate the project's venv)",
    ),
    pytest.mark.skipif(
        POSTGRES_URL is None,
        reason="the team stack's MLflow server and score stores need PostgreSQL: set "
        "CRISPML_TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
    ),
]

MODEL = "crispml-fraud"
HAS_BASE = (
    Path(__file__).resolve().parents[2] / "environments/base/kustomize/kustomization.yaml"
).is_file()
HAS_KUBECTL = shutil.which("kubectl") is not None


class World:
    """The repository, the shared services, and what earlier steps left for later ones."""

    def __init__(self, base: Path, team: dict[str, str]) -> None:
        self.base = base
        self.repo = base / "repo"
        # What `crispml ci local` keeps outside every build folder (its key, say); MLflow,
        # the DVC remotes and the stores are the stack's.
        self.state = base / "state"
        self.team = team
        self.tracking_uri = team["MLFLOW_TRACKING_URI"]
        # The team's CI/CD variables: the stack's MLflow, buckets, stores and S3 access.
        # Never a CRISPML_STORE_URL: each environment's store has its own variable.
        self.variables = {
            **{k: v for k, v in team.items() if k != "CRISPML_STORE_URL"},
            "CRISPML_PSEUDONYMISATION_KEY": "test-only-pseudonymisation-key-of-32+-bytes",
        }
        assert self.variables["DVC_REMOTE_URL_DEV"].startswith("s3://")
        self.facts: dict[str, Any] = {}
        self.started = time.monotonic()

    # ---- git

    def head(self, ref: str = "HEAD") -> str:
        return git(self.repo, "rev-parse", ref).stdout.strip()

    def checkout(self, branch: str, create_from: str | None = None) -> None:
        if create_from:
            git(self.repo, "checkout", "-q", "-b", branch, create_from)
        else:
            git(self.repo, "checkout", "-q", branch)

    def commit_all(self, message: str) -> str:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        return self.head()

    def merge(self, source: str) -> None:
        """`git merge` as a release manager types it; a conflict fails the test."""
        done = git(self.repo, "merge", "--no-edit", source, check=False)
        assert done.returncode == 0, f"merging {source} conflicted:\n{done.stdout}\n{done.stderr}"
        assert not git(self.repo, "diff", "--name-only", "--diff-filter=U").stdout.strip()

    def assert_clean(self) -> None:
        """CI never writes into the branch: no commit, no change in the work tree."""
        status = git(self.repo, "status", "--porcelain").stdout.strip()
        assert status == "", f"the pipeline changed the work tree:\n{status}"

    # ---- pipelines

    def branch_pipeline(
        self, branch: str, jobs: list[str], manual: list[str] | None = None
    ) -> PipelineRun:
        self.checkout(branch)
        before = self.head()
        run = run_pipeline(
            self.repo,
            branch,
            jobs=jobs,
            manual=manual or [],
            variables=self.variables,
            state=self.state,
        )
        self.log(f"{branch}-{'-'.join(jobs)}", run)
        assert self.head() == before, "CI committed onto an environment branch"
        self.assert_clean()
        return run

    def mr_pipeline(self, source: str, target: str, iid: int) -> PipelineRun:
        self.checkout(source)
        # The trap: a store variable GitLab would rank above anything .gitlab-ci.yml
        # sets (here a pipeline variable; a project variable ranks the same way),
        # pointing at dev's real store.
        variables = {**self.variables, "CRISPML_STORE_URL": self.store_url("dev")}
        run = run_pipeline(
            self.repo,
            mr=target,
            iid=iid,
            jobs=["reproduce", "gate", "mr-report"],
            variables=variables,
            state=self.state,
        )
        self.log(f"mr{iid}-{source}-into-{target}", run)
        self.assert_clean()
        return run

    def log(self, name: str, run: PipelineRun) -> None:
        (self.base / "logs").mkdir(exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
        (self.base / "logs" / f"{safe}.log").write_text(run.output)
        print(
            f"pipeline {name}: {run.jobs} in {run.seconds:.0f} s "
            f"(module so far {time.monotonic() - self.started:.0f} s)"
        )

    # ---- stores

    def store_url(self, env: str) -> str:
        """The environment's PostgreSQL store, as CI's CRISPML_STORE_URL_<ENV> names it."""
        return self.team[f"CRISPML_STORE_URL_{env.upper()}"]

    def scores_in(self, env: str) -> int:
        """Rows in an environment's score store (0 when nothing ever wrote to it)."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.store_url(env))
        try:
            with engine.connect() as db:
                if not sqlalchemy.inspect(db).has_table("scores"):
                    return 0
                return db.execute(sqlalchemy.text("select count(*) from scores")).scalar_one()
        finally:
            engine.dispose()

    # ---- registry

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def holder(self, alias: str) -> Any:
        from pipeline.registry import alias_holder

        return alias_holder(self.client(), MODEL, alias)

    def history(self, alias: str) -> list[dict]:
        """The alias's history, kept in the store of the environment that moves it
        (@prod-challenger: prod's)."""
        from pipeline.registry import alias_history
        from pipeline.store import ScoreStore

        env = alias.split("-")[0]
        store = ScoreStore(self.store_url(env))
        try:
            store.migrate()
            return alias_history(self.client(), store, MODEL, alias)
        finally:
            store.dispose()

    def version(self, version: str) -> Any:
        return self.client().get_model_version(MODEL, version)

    def versions(self) -> list[str]:
        return sorted(
            (str(v.version) for v in self.client().search_model_versions(f"name = '{MODEL}'")),
            key=int,
        )


def _registered(world: World, job: str = "reproduce") -> dict:
    return json.loads(artifact(world.repo, job, "reports/registered.json").read_text())


def _assert_verified(world: World) -> None:
    """verify judged the scores with their labels: scores and labels reached the store."""
    verify = json.loads(artifact(world.repo, "reproduce", "reports/verify.json").read_text())
    assert verify["overall"]["labeled_rows"] > 0, verify["overall"]
    assert verify["overall"]["pr_auc"] is not None


def _assert_gate_had_evidence(world: World) -> dict:
    """The register gate judged enough positives to mean something."""
    gate = json.loads(artifact(world.repo, "reproduce", "reports/gate.json").read_text())
    assert gate.get("positives", 0) >= 30, gate
    return gate


def _explain(run: PipelineRun, *jobs: str) -> str:
    return "\n\n".join(f"--- {job} ({run.status(job)})\n{run.log(job)[-6000:]}" for job in jobs)


@pytest.fixture(scope="module")
def team_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`crispml stack up` for the module: S3 (moto), MLflow server, stores on PostgreSQL.

    Its own folder (holding the project's DVC remotes) and its own databases, dropped at
    the end, so that nothing is shared with another run on the same server.
    """
    from pipeline import stack

    root = tmp_path_factory.mktemp("team")
    (root / ".dvc").mkdir()
    shutil.copy2(Path(__file__).resolve().parents[2] / ".dvc" / "config", root / ".dvc")
    prefix = f"crispml_gitops_{uuid.uuid4().hex[:8]}"
    state = stack.up(
        root, postgres_url=POSTGRES_URL, db_prefix=prefix, configure_dvc=False, timeout=300
    )
    try:
        yield stack.exports(state)
    finally:
        stack.down(root, purge=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, team_stack: dict[str, str]) -> World:
    """A team repository on dev/qa/prod with a committed baseline, and empty services."""
    import mlflow

    w = World(tmp_path_factory.mktemp("gitops"), team_stack)
    repo = copy_project(w.repo)
    # The shipped data and gates. Two score frames before the generator's synthetic drift
    # (it starts at frame 10), so that the verify gates of qa and prod judge models
    # rather than the drift scenario, and the scoring jobs stay short.
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("score: [7, 8, 9, 10, 11, 12]", "score: [8, 9]"))
    assert "score: [8, 9]" in params.read_text()
    git(repo, "init", "-q", "-b", "dev")
    (repo / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")
    # The team's MLflow server: the experiment keeps the server's artifact root (its S3
    # bucket, through the server's artifact proxy).
    mlflow.set_tracking_uri(w.tracking_uri)
    experiment = mlflow.get_experiment(mlflow.create_experiment("crispml"))
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment
    w.commit_all("CrispML, shipped data and gates")
    # A developer's baseline: `dvc repro` up to the metrics, committed with dvc.lock,
    # so that merge requests have metrics on dev to diff against.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        ["dvc", "repro", "report"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # ...and pushed to dev's remote (the stack's S3) with its run-cache, as a developer
    # would, so that the first dev pipelines restore the data stages instead of
    # recomputing them.
    env.update({k: v for k, v in w.team.items() if k.startswith("AWS_")})
    for args in (
        ["dvc", "remote", "modify", "--local", "dev", "url", w.variables["DVC_REMOTE_URL_DEV"]],
        ["dvc", "push", "--run-cache", "--remote", "dev"],
    ):
        done = subprocess.run(args, cwd=repo, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    w.commit_all("baseline: dvc repro report")
    git(repo, "branch", "qa")
    git(repo, "branch", "prod")
    w.facts["baseline_pr_auc"] = json.loads((repo / "reports" / "metrics.json").read_text())[
        "pr_auc"
    ]
    print(f"baseline in {time.monotonic() - w.started:.0f} s")
    return w


# --------------------------------------------------------------------------- 1. review


def test_merge_request_retrains_gates_and_reports(world: World) -> None:
    world.checkout("feature/learning-rate", create_from="dev")
    edit(world.repo / "params.yaml", learning_rate="0.1")
    commit = world.commit_all("train: learning rate 0.1")

    run = world.mr_pipeline("feature/learning-rate", "dev", iid=1)

    assert run.status("reproduce") == "pass", _explain(run, "reproduce")
    _assert_verified(world)
    _assert_gate_had_evidence(world)
    assert run.status("gate") == "pass", _explain(run, "reproduce", "gate")
    assert run.status("mr-report") == "pass", _explain(run, "mr-report")
    report = artifact(world.repo, "mr-report", "mr-report.md").read_text()
    assert report.startswith("<!-- crispml:mr-report -->")
    assert "**PASSED** in environment `dev`" in report
    # The metrics diff holds the target branch's value and this pipeline's, side by side.
    metrics = report.split("### Metrics diff")[1].split("<details>")[0]
    row = next(line for line in metrics.splitlines() if "| pr_auc " in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "reports/metrics.json"
    assert float(cells[2]) == pytest.approx(world.facts["baseline_pr_auc"], abs=1e-5)
    assert float(cells[3]) != pytest.approx(float(cells[2]), abs=1e-9)
    params = report.split("### Params diff")[1].split("###")[0]
    assert "learning_rate" in params and "0.08" in params and "0.1" in params
    assert "### Drift and realised quality" in report and "| **all** |" in report
    assert "reports/verify/all_drift.html" in report

    registered = _registered(world)
    candidate = world.version(registered["candidate_version"])
    assert candidate.tags["environment"] == "dev"
    assert candidate.tags["git_commit"] == commit
    assert candidate.tags["gate.dev"] == "passed"
    assert candidate.tags["artifact.sha256"] == registered["artifact_sha256"]
    assert (
        candidate.tags["lineage.pipeline"]
        == git(world.repo, "rev-parse", f"{commit}:pipeline").stdout.strip()
    )
    world.facts["mr1"] = registered


def test_merge_request_scores_stay_out_of_the_environment_store(world: World) -> None:
    log = (world.base / "logs" / "mr1-feature-learning-rate-into-dev.log").read_text()
    assert "CRISPML_STORE_URL was set for this job" in log
    assert "a merge request pipeline: a throwaway store inside the job" in log
    assert world.scores_in("dev") == 0, "a review wrote into dev's store"


def test_merge_request_does_not_move_the_alias(world: World) -> None:
    registered = world.facts["mr1"]
    assert registered["alias_deferred"] is True
    assert not world.history("dev"), "a merge request pipeline moved @dev"


# --------------------------------------------------------------------------- 2. promotion


def _deploy(env: str) -> list[str]:
    return [f"deploy:{env}"] if HAS_BASE and HAS_KUBECTL else []


def test_dev_pipeline_promotes_the_merged_model(world: World) -> None:
    world.checkout("dev")
    world.merge("feature/learning-rate")
    commit = world.facts["dev_commit"] = world.head()

    run = world.branch_pipeline("dev", ["reproduce", "gate", "promote", *_deploy("dev")])

    for job in ("reproduce", "gate", "promote", *_deploy("dev")):
        assert run.status(job) == "pass", _explain(run, job)
    _assert_verified(world)
    assert "PROMOTED: @dev -> version" in run.log("promote")
    holder = world.holder("dev")
    assert holder.tags["environment"] == "dev"
    assert holder.tags["git_commit"] == commit
    assert holder.tags["gate.dev"] == "passed"
    assert world.scores_in("dev") > 0, "dev's pipeline scores into dev's store"
    world.facts["dev_version"] = str(holder.version)


def test_qa_is_promoted_by_merging_dev(world: World) -> None:
    world.checkout("qa")
    world.merge("dev")
    commit = world.facts["qa_commit"] = world.head()
    assert commit == world.head("dev"), "qa should hold exactly what dev validated"
    assert "env: dev" in (world.repo / "params.yaml").read_text(), "env is set by CI, not committed"

    run = world.branch_pipeline("qa", ["reproduce", "gate", "promote", *_deploy("qa")])

    for job in ("reproduce", "gate", "promote", *_deploy("qa")):
        assert run.status(job) == "pass", _explain(run, "reproduce", job)
    _assert_verified(world)
    _assert_gate_had_evidence(world)
    holder = world.holder("qa")
    assert holder.tags["environment"] == "qa"
    assert holder.tags["git_commit"] == commit
    lock = artifact(world.repo, "reproduce", "dvc.lock").read_text()
    assert "environments/qa/params.yaml" in lock and "environments/dev/params.yaml" not in lock
    assert world.scores_in("qa") > 0


def test_prod_is_promoted_through_shadow_by_merging_qa(world: World) -> None:
    world.checkout("prod")
    world.merge("qa")
    commit = world.facts["prod_commit"] = world.head()

    deploy = _deploy("prod")
    manual = ["promote:prod-champion", *deploy]
    run = world.branch_pipeline(
        "prod", ["reproduce", "gate", "promote", "promote:prod-champion", *deploy], manual=manual
    )

    for job in ("reproduce", "gate", "promote", "promote:prod-champion", *deploy):
        assert run.status(job) == "pass", _explain(run, "reproduce", job)
    _assert_verified(world)
    _assert_gate_had_evidence(world)
    # The promote job moved the challenger, not the champion...
    promotion = json.loads(artifact(world.repo, "promote", "reports/promotion.json").read_text())
    assert promotion["alias"] == "prod-challenger" and promotion["shadow"] is True
    assert "PROMOTED: @prod-challenger -> version" in run.log("promote")
    challenger_events = world.history("prod-challenger")
    assert challenger_events and "in shadow" in challenger_events[0]["reason"]
    # ...and the manual job made it the champion, with the pipeline as its reason.
    holder = world.holder("prod")
    assert str(holder.version) == promotion["version"]
    assert holder.tags["environment"] == "prod"
    assert holder.tags["git_commit"] == commit
    assert holder.tags["gate.prod"] == "passed"
    assert "(manual)" in world.history("prod")[-1]["reason"]
    # Each environment serves its own model of the same commit.
    versions = {str(world.holder(env).version) for env in ("dev", "qa", "prod")}
    assert len(versions) == 3
    world.facts["prod_version"] = str(holder.version)


@pytest.mark.skipif(
    not (HAS_BASE and HAS_KUBECTL), reason="needs environments/base/kustomize and kubectl"
)
def test_deploy_jobs_rendered_each_overlay(world: World) -> None:
    for env in ("dev", "qa", "prod"):
        manifests = artifact(
            world.repo, f"deploy:{env}", f"deploy/{env}/manifests.yaml"
        ).read_text()
        assert f"namespace: crispml-{env}" in manifests
        assert f"crispml.io/model-uri: models:/{MODEL}@{env}" in manifests
        assert f"crispml.io/environment: {env}" in manifests
        assert f"/service:{world.facts[env + '_commit']}" in manifests
    prod = artifact(world.repo, "deploy:prod", "deploy/prod/manifests.yaml").read_text()
    assert "kind: HorizontalPodAutoscaler" in prod
    assert f"crispml.io/challenger-uri: models:/{MODEL}@prod-challenger" in prod
    dev = artifact(world.repo, "deploy:dev", "deploy/dev/manifests.yaml").read_text()
    assert "kind: HorizontalPodAutoscaler" not in dev


# --------------------------------------------------------------------------- 3. a worse model


def test_worse_model_forced_to_prod_is_not_taken(world: World) -> None:
    """A worse model merged through dev and qa to prod: prod's own gate refuses it (a
    paired bootstrap against @prod), and the fallback refuses the @qa model, which was
    built from other params (its lineage keys differ), so @prod stays where it was."""
    qa_before = str(world.holder("qa").version)
    prod_before = str(world.holder("prod").version)
    world.checkout("feature/one-iteration", create_from="dev")
    edit(world.repo / "params.yaml", max_iter="1")
    commit = world.facts["worse_commit"] = world.commit_all("train: a single boosting iteration")
    for branch, source in (("dev", "feature/one-iteration"), ("qa", "dev"), ("prod", "qa")):
        world.checkout(branch)
        world.merge(source)
    assert world.head() == commit

    run = world.branch_pipeline("prod", ["reproduce", "gate", "promote"])

    assert run.status("reproduce") == "pass", _explain(run, "reproduce")
    _assert_verified(world)
    gate = _assert_gate_had_evidence(world)
    assert gate["passed"] is False and gate["comparison"]["verdict"] == "failed", gate
    assert run.status("gate") == "warn", _explain(run, "gate")
    assert "register gate failed" in run.log("gate")
    assert run.status("promote") == "fail", _explain(run, "reproduce", "promote")
    log = run.log("promote")
    assert f"NOT PROMOTED: @prod stays on version {prod_before}" in log
    assert f"No fallback: @qa holds version {qa_before}, built from other code, params" in log
    assert "params.yaml" in log
    registered = _registered(world)
    assert registered["fallback"]["used"] is False
    own = world.version(registered["candidate_version"])
    assert own.tags["environment"] == "prod" and own.tags["gate.prod"] == "failed"
    assert str(world.holder("prod").version) == prod_before
    assert world.holder("prod-challenger") is None, "nothing new runs in shadow"


# --------------------------------------------------------------------------- 4. after the incident


def test_a_new_model_replaces_it_and_a_rerun_reuses_its_version(world: World) -> None:
    world.checkout("dev")
    edit(world.repo / "params.yaml", max_iter="200", learning_rate="0.06")
    commit = world.commit_all("train: revert to 200 iterations, learning rate 0.06")
    previous = str(world.holder("dev").version)

    run = world.branch_pipeline("dev", ["reproduce", "gate", "promote"])
    for job in ("reproduce", "gate", "promote"):
        assert run.status(job) == "pass", _explain(run, "reproduce", job)
    new = str(world.holder("dev").version)
    assert new != previous and world.holder("dev").tags["git_commit"] == commit
    world.facts["dev_previous"], world.facts["dev_new"] = previous, new
    versions = world.versions()

    # The same commit again: DVC restores the trained model from the run-cache, so the
    # artifact is the same and register reuses the version instead of adding one.
    again = world.branch_pipeline("dev", ["reproduce", "gate", "promote"])
    for job in ("reproduce", "gate", "promote"):
        assert again.status(job) == "pass", _explain(again, "reproduce", job)
    registered = _registered(world)
    assert registered["reused_version"] is True, registered
    assert registered["candidate_version"] == new
    assert world.versions() == versions, "an identical model was registered again"
    assert str(world.holder("dev").version) == new


def test_rollback_job_restores_the_previous_version(world: World) -> None:
    before = world.history("dev")
    run = world.branch_pipeline("dev", ["rollback"], manual=["rollback"])

    assert run.status("rollback") == "pass", _explain(run, "rollback")
    previous, new = world.facts["dev_previous"], world.facts["dev_new"]
    assert f"ROLLED BACK: @dev version {new} -> version {previous}" in run.log("rollback")
    assert str(world.holder("dev").version) == previous
    after = world.history("dev")
    assert after[: len(before)] == before, "the history must keep every earlier move"
    assert after[-1]["reason"].startswith("rollback")
    assert after[-1]["version"] == previous


# --------------------------------------------------------------------------- 5. schedule


def test_schedule_runs_continuous_training_on_the_environment_store(world: World) -> None:
    world.checkout("dev")
    run = run_pipeline(
        world.repo,
        "dev",
        source="schedule",
        jobs=["continuous-training"],
        variables=world.variables,
        state=world.state,
    )
    world.log("schedule-dev", run)
    world.assert_clean()

    assert run.status("continuous-training") == "pass", _explain(run, "continuous-training")
    log = run.log("continuous-training")
    assert f"CRISPML_STORE_URL_DEV ({redact_url(world.store_url('dev'))})" in log
    assert "continuous training:" in log
    result = json.loads(
        artifact(world.repo, "continuous-training", "reports/continuous-training.json").read_text()
    )
    assert result["environment"] == "dev"
    print(f"module total {time.monotonic() - world.started:.0f} s")


# --------------------------------------------------------------------------- 6. team services


def test_results_live_in_the_team_services(world: World) -> None:
    """The registry's models are in the MLflow bucket, and each environment branch pushed
    its outputs and run-cache to its own prefix of the DVC bucket."""
    import boto3

    from pipeline import stack

    s3 = boto3.client(
        "s3",
        endpoint_url=world.team["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=world.team["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=world.team["AWS_SECRET_ACCESS_KEY"],
        region_name=world.team["AWS_DEFAULT_REGION"],
    )

    def keys(bucket: str, prefix: str = "") -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    models = [key for key in keys(stack.MLFLOW_BUCKET) if key.endswith("/MLmodel")]
    assert len(models) >= len(world.versions()), models
    for env in ("dev", "qa", "prod"):
        pushed = keys(stack.DVC_BUCKET, f"{env}/")
        assert any(key.startswith(f"{env}/files/md5/") for key in pushed), (env, pushed[:5])
        assert any(key.startswith(f"{env}/runs/") for key in pushed), (env, pushed[:5])
