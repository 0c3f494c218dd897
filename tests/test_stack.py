"""`crispml stack`: the pure core (commands, variables, state) and, slow, the whole stack.

The slow test starts the stack for a copy of the project, runs the pipeline on the
shipped data against it, pushes to the S3 remote, and checks that a fresh clone pulls
everything and reproduces nothing; that the registered model and its artifacts are on
the MLflow server and in its bucket; and that the scores are in PostgreSQL.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import stack
from pipeline.cli import cli
from tests.conftest import PROJECT, copy_project, postgres_url

PASSWORD = "s3cr3t-pw"


def _state(**changes) -> stack.StackState:
    values = {
        "root": "/somewhere/project",
        "s3_port": 5001,
        "mlflow_port": 5002,
        "access_key_id": "AKTEST",
        "secret_access_key": "secret/with+chars",
        "postgres_url": f"postgresql+psycopg://crispml:{PASSWORD}@127.0.0.1:5433/postgres",
        "managed_postgres": True,
        "db_prefix": "team",
        "remotes": ["dev", "qa", "prod", "real"],
    }
    values.update(changes)
    return stack.StackState(**values)


# --------------------------------------------------------------------------- pure core


def test_exports_point_everything_at_the_stack() -> None:
    out = stack.exports(_state())
    assert out["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5002"
    assert out["CRISPML_STORE_URL"] == (
        f"postgresql+psycopg://crispml:{PASSWORD}@127.0.0.1:5433/team_scores"
    )
    for env in ("dev", "qa", "prod"):
        assert out[f"CRISPML_STORE_URL_{env.upper()}"].endswith(f"/team_scores_{env}")
    assert out["DVC_REMOTE_URL_DEV"] == "s3://crispml-dvc/dev"
    assert out["DVC_REMOTE_URL_REAL"] == "s3://crispml-dvc/real"
    assert out["AWS_ENDPOINT_URL_S3"] == out["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:5001"
    assert out["AWS_ACCESS_KEY_ID"] == "AKTEST"
    assert out["AWS_SECRET_ACCESS_KEY"] == "secret/with+chars"
    assert out["AWS_DEFAULT_REGION"]


def test_shell_exports_survive_eval() -> None:
    variables = {"A_URL": "postgresql://u:p@h/db?x=1&y=2", "B": "it's $HOME `x`"}
    script = stack.shell_exports(variables) + 'printf "%s\\n%s" "$A_URL" "$B"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [variables["A_URL"], variables["B"]]


def test_database_url_keeps_the_password_and_uses_psycopg() -> None:
    url = stack.database_url("postgresql://me:pw@db.example:6543/anything", "team_mlflow")
    assert url == "postgresql+psycopg://me:pw@db.example:6543/team_mlflow"
    with pytest.raises(stack.ConfigError, match="PostgreSQL"):
        stack.database_url("sqlite:///x.db", "y")
    assert stack.connection_args(url) == {
        "host": "db.example",
        "port": 6543,
        "user": "me",
        "dbname": "team_mlflow",
        "password": "pw",
    }


def test_database_names_are_prefixed() -> None:
    names = stack.database_names("p")
    assert names == {
        "mlflow": "p_mlflow",
        "scores": "p_scores",
        "scores_dev": "p_scores_dev",
        "scores_qa": "p_scores_qa",
        "scores_prod": "p_scores_prod",
    }
    for wrong in ('x"; drop database y; --', "Upper", ""):
        with pytest.raises(stack.ConfigError, match="prefix"):
            stack.database_names(wrong)


def test_mlflow_server_serves_s3_artifacts_and_keeps_the_password_off_its_command() -> None:
    state = _state()
    command = stack.mlflow_command(5002, "/venv/bin/mlflow")
    assert command[:2] == ["/venv/bin/mlflow", "server"]
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "s3://crispml-mlflow/artifacts"
    assert command[command.index("--port") + 1] == "5002"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert not any(PASSWORD in part for part in command)
    env = stack.mlflow_environment(
        state, {"PATH": "/bin", "MLFLOW_TRACKING_URI": "sqlite:///x", "AWS_PROFILE": "prod"}
    )
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("/team_mlflow")
    assert PASSWORD in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:5001"
    assert "MLFLOW_TRACKING_URI" not in env and "AWS_PROFILE" not in env
    assert env["PATH"] == "/bin"


def test_moto_listens_on_the_loopback() -> None:
    assert stack.moto_command(5001, "/py") == [
        "/py",
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        "5001",
    ]


def test_postgres_commands_run_as_postgres_when_root(tmp_path: Path) -> None:
    data, pw = tmp_path / "data", tmp_path / "pw"
    as_root = stack.initdb_command(data, pw, euid=0)
    assert as_root[:4] == ["runuser", "-u", "postgres", "--"]
    assert as_root[4] == "initdb" and "--pwfile" in as_root and "scram-sha-256" in as_root
    assert stack.initdb_command(data, pw, euid=1000)[0] == "initdb"
    start = stack.pg_ctl_command("start", data, 5433, tmp_path / "log", euid=1000)
    assert start[0] == "pg_ctl" and start[-1] == "start"
    options = start[start.index("-o") + 1]
    assert "-p 5433" in options and "listen_addresses=127.0.0.1" in options
    stop = stack.pg_ctl_command("stop", data, euid=1000)
    assert stop[-1] == "stop" and "fast" in stop


def test_state_round_trips_and_credentials_are_random() -> None:
    state = _state(pids={"s3": 12, "mlflow": 13})
    assert stack.StackState.from_json(state.to_json()) == state
    first, second = stack.new_credentials(), stack.new_credentials()
    assert first != second
    assert len(first[0]) == 20 and len(first[1]) >= 30


def test_dvc_config_commands_and_restore(tmp_path: Path) -> None:
    state = _state(root=str(tmp_path), remotes=["dev"])
    assert stack.dvc_config_commands(state) == [
        ["dvc", "remote", "modify", "--local", "dev", "url", "s3://crispml-dvc/dev"],
        ["dvc", "remote", "modify", "--local", "dev", "endpointurl", "http://127.0.0.1:5001"],
    ]
    (tmp_path / ".dvc").mkdir()
    (tmp_path / stack.STACK_DIR).mkdir(parents=True)
    local = tmp_path / ".dvc" / "config.local"
    stack.keep_dvc_config(tmp_path)
    local.write_text("changed by up")
    stack.restore_dvc_config(tmp_path)
    assert not local.exists(), "there was no config.local before"
    local.write_text("mine")
    stack.keep_dvc_config(tmp_path)
    local.write_text("changed by up")
    stack.keep_dvc_config(tmp_path)  # a second up keeps the first copy
    stack.restore_dvc_config(tmp_path)
    assert local.read_text() == "mine"


def test_remotes_are_read_from_the_dvc_config() -> None:
    assert {"dev", "qa", "prod"} <= set(stack.dvc_remotes(PROJECT))


def test_status_without_a_stack_exits_6(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("env: dev\n")
    result = CliRunner().invoke(cli, ["stack", "status", "--root", str(tmp_path)])
    assert result.exit_code == 6, result.output
    assert "not up" in result.output


def test_stack_help_lists_its_commands() -> None:
    result = CliRunner().invoke(cli, ["stack", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), result.output


# --------------------------------------------------------------------------- the real stack


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout + done.stderr


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "CrispML Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "CrispML Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    return _run(["git", *args], cwd, env)


def _parse_exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        name, _, value = words[1].partition("=")
        out[name] = value
    return out


@pytest.mark.slow
@pytest.mark.skipif(
    postgres_url() is None,
    reason="the stack's MLflow server and score store need PostgreSQL: set "
    "CRISPML_TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
)
@pytest.mark.skipif(shutil.which("dvc") is None, reason="needs `dvc` on PATH")
def test_the_pipeline_runs_on_the_stack_and_a_clone_reproduces_nothing(tmp_path: Path) -> None:
    import boto3
    import sqlalchemy
    from mlflow import MlflowClient

    shipped = yaml.safe_load((PROJECT / "params.yaml").read_text())["generator"]
    root = copy_project(tmp_path / "project", shipped["rows"], shipped["fraud_rate"])
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore"):
        if (PROJECT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, root / name)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "AWS_", "CRISPML_STORE_URL", "DVC_REMOTE_URL"))
    }
    base_env.pop("CRISPML_GIT_COMMIT", None)
    _git(root, "init", "-q", "-b", "dev")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "project")
    crispml = [shutil.which("crispml") or "crispml", "stack"]
    prefix = f"crispml_test_{uuid.uuid4().hex[:8]}"
    up = [*crispml, "up", "--root", str(root), "--postgres-url", postgres_url()]
    up += ["--db-prefix", prefix, "--timeout", "300"]
    started = time.monotonic()
    try:
        first = subprocess.run(up, cwd=root, env=base_env, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        exports = _parse_exports(first.stdout)
        print(f"stack up in {time.monotonic() - started:.0f} s")
        # Idempotent: a second `up` finds it running and prints the same variables.
        again = subprocess.run(up, cwd=root, env=base_env, capture_output=True, text=True)
        assert again.returncode == 0 and "already up" in again.stderr, again.stderr
        assert _parse_exports(again.stdout) == exports
        assert (
            subprocess.run([*crispml, "status", "--root", str(root)], env=base_env).returncode == 0
        )
        assert "s3://crispml-dvc/dev" in (root / ".dvc" / "config.local").read_text()
        env = {**base_env, **exports}

        t = time.monotonic()
        _run(["dvc", "repro"], root, env)
        print(f"dvc repro on the stack in {time.monotonic() - t:.0f} s")
        _run(["dvc", "push", "--run-cache"], root, env)
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", "dvc repro on the team stack")

        # A teammate: a fresh clone, the remote's URL from the team's variable, dvc pull.
        clone = tmp_path / "clone"
        _git(tmp_path, "clone", "-q", str(root), str(clone))
        remote = ["dvc", "remote", "modify", "--local", "dev", "url"]
        _run([*remote, exports["DVC_REMOTE_URL_DEV"]], clone, env)
        _run(["dvc", "pull"], clone, env)
        status = _run(["dvc", "status"], clone, env)
        changed = [line for line in status.splitlines() if line and not line.startswith("\t")]
        assert changed in ([], ["source:"]), status  # source is always_changed
        repro = _run(["dvc", "repro"], clone, env)
        ran = set(re.findall(r"Running stage '([^']+)'", repro))
        assert ran <= {"source"}, repro
        assert not _git(clone, "status", "--porcelain", "--", "dvc.lock").strip(), repro

        # MLflow: the registered model on the server, its artifacts in the S3 bucket.
        client = MlflowClient(exports["MLFLOW_TRACKING_URI"], exports["MLFLOW_TRACKING_URI"])
        name = yaml.safe_load((root / "params.yaml").read_text())["register"]["model_name"]
        versions = client.search_model_versions(f"name = '{name}'")
        assert versions, "no registered model version on the MLflow server"
        s3 = boto3.client(
            "s3",
            endpoint_url=exports["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            region_name=exports["AWS_DEFAULT_REGION"],
        )
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=stack.MLFLOW_BUCKET)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
        dvc_keys = s3.list_objects_v2(Bucket=stack.DVC_BUCKET, Prefix="dev/runs/")
        assert dvc_keys.get("KeyCount", 0) > 0, "the run-cache was not pushed"

        # The score store: rows in PostgreSQL.
        engine = sqlalchemy.create_engine(exports["CRISPML_STORE_URL"])
        try:
            with engine.connect() as db:
                rows = db.execute(sqlalchemy.text("select count(*) from scores")).scalar_one()
        finally:
            engine.dispose()
        assert rows > 0
    finally:
        t = time.monotonic()
        subprocess.run([*crispml, "down", "--root", str(root), "--purge"], env=base_env)
        print(f"stack down in {time.monotonic() - t:.0f} s")
    status = subprocess.run([*crispml, "status", "--root", str(root)], env=base_env)
    assert status.returncode == 6
    assert not (root / ".dvc" / "config.local").exists()
