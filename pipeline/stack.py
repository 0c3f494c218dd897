"""`crispml stack up|down|status`: the team's services on this machine, one command away.

The embedded defaults (MLflow on a SQLite file, DVC remotes in local folders, a SQLite
score store) suit one person. A team runs an MLflow server on PostgreSQL with S3
artifacts, S3 buckets for the DVC remotes and the score store on PostgreSQL. This
module starts exactly that as local background processes, so that the team set-up can
be tried, developed and tested without any cloud account:

* an S3 endpoint: moto's server (`python -m moto.server`), with the DVC bucket (one
  prefix per DVC remote: `s3://crispml-dvc/<remote>`) and the MLflow artifacts bucket;
* PostgreSQL: a cluster of its own under `.crispml/stack/postgres` (initdb, run as the
  `postgres` system user when we are root, a random password), or an existing server
  (`--postgres-url`, or CRISPML_STACK_POSTGRES_URL), where it creates its databases:
  `<prefix>_mlflow`, `<prefix>_scores` and one score store per CI environment;
* an MLflow tracking server on that PostgreSQL, serving artifacts from the S3 bucket
  (`--serve-artifacts --artifacts-destination s3://...`): clients need only the
  tracking URI, the server alone holds the bucket's credentials, as a team runs it.

`up` prints the variables to export (`eval "$(crispml stack up)"`): the same names a
team sets to point everything at its real MLflow, S3 and PostgreSQL. Moto keeps objects
in memory, so `down` saves the buckets under `.crispml/stack/s3/` and the next `up`
loads them again. Everything (state, credentials, data, logs) stays under
`.crispml/stack/`, which Git ignores.

The core (commands, variables, state) is pure; the process glue is at the end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, CrispError, ServiceUnavailable

STACK_DIR = Path(".crispml") / "stack"
DVC_BUCKET = "crispml-dvc"
MLFLOW_BUCKET = "crispml-mlflow"
REGION = "us-east-1"
HOST = "127.0.0.1"
POSTGRES_URL_VARIABLE = "CRISPML_STACK_POSTGRES_URL"
# The environments a CI pipeline run locally (`crispml ci local`) keeps a store for.
CI_ENVIRONMENTS = ("dev", "qa", "prod")
SERVICES = ("s3", "postgres", "mlflow")


class StackNotUp(CrispError):
    """`status` and friends: the stack, or one of its services, does not run."""

    exit_code = ServiceUnavailable.exit_code


# --------------------------------------------------------------------------- state


@dataclass
class StackState:
    """What `up` decided and started; kept in `.crispml/stack/state.json` (mode 0600)."""

    root: str
    s3_port: int
    mlflow_port: int
    access_key_id: str
    secret_access_key: str
    # SQLAlchemy URL of the PostgreSQL that holds the databases (a maintenance database).
    postgres_url: str
    managed_postgres: bool
    db_prefix: str = "crispml"
    remotes: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.root) / STACK_DIR

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        return cls(**json.loads(text))


def new_credentials() -> tuple[str, str]:
    """A random access key id and secret for the S3 endpoint (never committed)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key_id = "AKCRISP" + "".join(secrets.choice(alphabet) for _ in range(13))
    return key_id, secrets.token_urlsafe(30)


def database_names(prefix: str) -> dict[str, str]:
    """Role -> database: MLflow's, the developer's score store, one store per CI env."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefix):
        raise ConfigError(
            f"database prefix {prefix!r}: use lower-case letters, digits and _ (at most 41)"
        )
    names = {"mlflow": f"{prefix}_mlflow", "scores": f"{prefix}_scores"}
    names.update({f"scores_{env}": f"{prefix}_scores_{env}" for env in CI_ENVIRONMENTS})
    return names


def database_url(server_url: str, database: str) -> str:
    """`server_url` (any database on the server) pointed at `database`, password kept."""
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    if not url.drivername.startswith("postgresql"):
        raise ConfigError(f"the stack needs a PostgreSQL URL, not {url.drivername}://...")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.set(database=database).render_as_string(hide_password=False)


def connection_args(url: str) -> dict[str, object]:
    """psycopg's keyword arguments for a SQLAlchemy PostgreSQL URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    args: dict[str, object] = {
        "host": parsed.host or HOST,
        "port": parsed.port or 5432,
        "user": parsed.username or "postgres",
        "dbname": parsed.database or "postgres",
    }
    if parsed.password:
        args["password"] = parsed.password
    return args


def s3_endpoint(state: StackState) -> str:
    return f"http://{HOST}:{state.s3_port}"


def tracking_uri(state: StackState) -> str:
    return f"http://{HOST}:{state.mlflow_port}"


def remote_url(remote: str) -> str:
    return f"s3://{DVC_BUCKET}/{remote}"


def artifacts_destination() -> str:
    return f"s3://{MLFLOW_BUCKET}/artifacts"


def store_variable(env: str) -> str:
    from pipeline.gitops.setup import store_url_variable

    return store_url_variable(env)


def s3_variables(state: StackState) -> dict[str, str]:
    """What boto3 (DVC's s3fs, MLflow's S3 store) reads to reach the endpoint."""
    endpoint = s3_endpoint(state)
    return {
        "AWS_ACCESS_KEY_ID": state.access_key_id,
        "AWS_SECRET_ACCESS_KEY": state.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        # botocore's endpoint for S3 alone (DVC reads it too), and MLflow's own name.
        "AWS_ENDPOINT_URL_S3": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }


def exports(state: StackState) -> dict[str, str]:
    """The variables that point the project at the stack, in a stable order."""
    from pipeline.gitops.setup import remote_url_variable

    names = database_names(state.db_prefix)
    out = {"MLFLOW_TRACKING_URI": tracking_uri(state)}
    out["CRISPML_STORE_URL"] = database_url(state.postgres_url, names["scores"])
    # `crispml ci local` and `crispml ci setup` read these (never CRISPML_STORE_URL).
    for env in CI_ENVIRONMENTS:
        out[store_variable(env)] = database_url(state.postgres_url, names[f"scores_{env}"])
    for remote in state.remotes:
        out[remote_url_variable(remote)] = remote_url(remote)
    out.update(s3_variables(state))
    return out


def shell_exports(variables: Mapping[str, str]) -> str:
    """`export NAME=value` lines for `eval "$(crispml stack up)"`."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


def moto_command(port: int, python: str = sys.executable) -> list[str]:
    return [python, "-m", "moto.server", "-H", HOST, "-p", str(port)]


def mlflow_command(port: int, mlflow: str, workers: int = 2) -> list[str]:
    """The tracking server; the backend URI (it may hold a password) goes by variable."""
    return [
        mlflow,
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination(),
    ]


def mlflow_environment(state: StackState, base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(s3_variables(state))
    env["MLFLOW_BACKEND_STORE_URI"] = database_url(
        state.postgres_url, database_names(state.db_prefix)["mlflow"]
    )
    return env


def as_postgres_user(command: list[str], euid: int | None = None) -> list[str]:
    """initdb and pg_ctl refuse to run as root: as root, run them as `postgres`."""
    euid = os.geteuid() if euid is None else euid
    return ["runuser", "-u", "postgres", "--", *command] if euid == 0 else command


def initdb_command(data: Path, password_file: Path, euid: int | None = None) -> list[str]:
    return as_postgres_user(
        [
            "initdb",
            "-D",
            str(data),
            "-U",
            "crispml",
            "--pwfile",
            str(password_file),
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        euid,
    )


def pg_ctl_command(
    action: str, data: Path, port: int | None = None, log: Path | None = None, euid=None
) -> list[str]:
    command = ["pg_ctl", "-D", str(data), "-w", "-t", "60"]
    if log is not None:
        command += ["-l", str(log)]
    if port is not None:
        # TCP on the loopback only; no Unix socket (its default folder may not exist).
        command += ["-o", f"-p {port} -c listen_addresses={HOST} -c unix_socket_directories=''"]
    if action == "stop":
        command += ["-m", "fast"]
    return as_postgres_user([*command, action], euid)


def dvc_remotes(root: Path) -> list[str]:
    """The DVC remotes .dvc/config defines (read as text)."""
    from pipeline.gitops.local import _remotes

    return _remotes(root)


def dvc_config_commands(state: StackState) -> list[list[str]]:
    """Point each remote at its S3 prefix in .dvc/config.local (ignored by Git)."""
    commands = []
    for remote in state.remotes:
        commands.append(["dvc", "remote", "modify", "--local", remote, "url", remote_url(remote)])
        commands.append(
            ["dvc", "remote", "modify", "--local", remote, "endpointurl", s3_endpoint(state)]
        )
    return commands


ABSENT = "# crispml stack: .dvc/config.local did not exist\n"


def keep_dvc_config(root: Path) -> None:
    """Keep .dvc/config.local as it was before the first `up` (once), for `down`."""
    kept = root / STACK_DIR / "dvc-config.local.before"
    if kept.is_file():
        return
    local = root / ".dvc" / "config.local"
    kept.write_text(local.read_text() if local.is_file() else ABSENT)


def restore_dvc_config(root: Path) -> None:
    """Put .dvc/config.local back as `keep_dvc_config` found it."""
    kept = root / STACK_DIR / "dvc-config.local.before"
    if not kept.is_file():
        return
    local = root / ".dvc" / "config.local"
    text = kept.read_text()
    if text == ABSENT:
        local.unlink(missing_ok=True)
    else:
        local.write_text(text)
    kept.unlink()


# --------------------------------------------------------------------------- process glue


def state_file(root: Path) -> Path:
    return root / STACK_DIR / "state.json"


def load_state(root: Path) -> StackState | None:
    path = state_file(root)
    return StackState.from_json(path.read_text()) if path.is_file() else None


def save_state(state: StackState) -> None:
    path = state_file(Path(state.root))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(state.to_json())
    temporary.chmod(0o600)
    temporary.replace(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def spawn(command: list[str], log: Path, env: Mapping[str, str], cwd: Path) -> int:
    """Start a background process in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return process.pid


def stop_process(pid: int | None, timeout: float = 15) -> None:
    """SIGTERM to the process group `spawn` made for `pid`, SIGKILL after `timeout`."""
    if not alive(pid):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.2)


def wait_until(check: Callable[[], bool], what: str, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = ""
    if log is not None and log.is_file():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise ServiceUnavailable(f"{what} did not answer within {timeout:.0f} s{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError):
        return False


def s3_answers(state: StackState) -> bool:
    return http_ok(s3_endpoint(state) + "/moto-api/") or http_ok(s3_endpoint(state))


def mlflow_answers(state: StackState) -> bool:
    return http_ok(tracking_uri(state) + "/health")


def postgres_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(**connection_args(url), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def s3_client(state: StackState):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(state),
        aws_access_key_id=state.access_key_id,
        aws_secret_access_key=state.secret_access_key,
        region_name=REGION,
    )


def create_buckets(state: StackState) -> None:
    client = s3_client(state)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (DVC_BUCKET, MLFLOW_BUCKET):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def save_buckets(state: StackState) -> int:
    """Moto keeps objects in memory: copy the buckets to .crispml/stack/s3 before a stop."""
    client = s3_client(state)
    target = state.folder / "s3"
    staging = state.folder / "s3.saving"
    shutil.rmtree(staging, ignore_errors=True)
    count = 0
    for bucket in (DVC_BUCKET, MLFLOW_BUCKET):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                path = staging / bucket / item["Key"]
                path.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(path))
                count += 1
    shutil.rmtree(target, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    staging.replace(target)
    return count


def load_buckets(state: StackState) -> int:
    """Put back what the last `down` saved."""
    source = state.folder / "s3"
    if not source.is_dir():
        return 0
    client = s3_client(state)
    count = 0
    for bucket in (DVC_BUCKET, MLFLOW_BUCKET):
        folder = source / bucket
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, path.relative_to(folder).as_posix())
            count += 1
    return count


def create_databases(state: StackState) -> None:
    import psycopg

    with psycopg.connect(**connection_args(state.postgres_url), autocommit=True) as db:
        have = {r[0] for r in db.execute("select datname from pg_database")}
        for name in database_names(state.db_prefix).values():
            if name not in have:
                db.execute(f'create database "{name}"')


def drop_databases(state: StackState) -> None:
    import psycopg

    with psycopg.connect(**connection_args(state.postgres_url), autocommit=True) as db:
        for name in database_names(state.db_prefix).values():
            db.execute(f'drop database if exists "{name}" with (force)')


def _run(command: list[str], cwd: Path, what: str) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CrispError(f"{what} failed ({' '.join(command)}):\n{done.stdout}{done.stderr}")


# ---- PostgreSQL of its own


def postgres_folder(root: Path) -> Path:
    return root / STACK_DIR / "postgres"


def start_own_postgres(root: Path, port: int, log: Callable[[str], None]) -> str:
    """initdb once, then pg_ctl start; the URL (with its random password) of `postgres`."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        raise ConfigError(
            "PostgreSQL's initdb and pg_ctl are not on PATH: install PostgreSQL, or give an "
            f"existing server with --postgres-url (or {POSTGRES_URL_VARIABLE})"
        )
    folder = postgres_folder(root)
    data = folder / "data"
    password_path = folder / "password"
    folder.mkdir(parents=True, exist_ok=True)
    root_user = os.geteuid() == 0
    if root_user:
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    if not (data / "PG_VERSION").is_file():
        password = secrets.token_urlsafe(24)
        password_path.write_text(password + "\n")
        password_path.chmod(0o600)
        if root_user:
            os.chown(password_path, owner.pw_uid, owner.pw_gid)
        log(f"stack: initdb {data}")
        _run(initdb_command(data, password_path), root, "initdb")
    password = password_path.read_text().strip()
    url = f"postgresql+psycopg://crispml:{password}@{HOST}:{port}/postgres"
    if not postgres_answers(url):
        _run(
            pg_ctl_command("start", data, port, folder / "postgres.log"),
            root,
            "starting PostgreSQL",
        )
    return url


def stop_own_postgres(root: Path) -> None:
    data = postgres_folder(root) / "data"
    if (data / "postmaster.pid").is_file():
        subprocess.run(pg_ctl_command("stop", data), cwd=root, capture_output=True)


# ---- up, down, status


def _mlflow_executable() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    found = str(beside) if beside.is_file() else shutil.which("mlflow")
    if not found:
        raise ConfigError("the `mlflow` command is not installed")
    return found


def health(state: StackState) -> dict[str, dict[str, object]]:
    """Each service: its pid (when we started it), address and whether it answers."""
    return {
        "s3": {
            "pid": state.pids.get("s3"),
            "url": s3_endpoint(state),
            "answers": alive(state.pids.get("s3")) and s3_answers(state),
        },
        "postgres": {
            "managed": state.managed_postgres,
            "url": _redacted(state.postgres_url),
            "answers": postgres_answers(state.postgres_url),
        },
        "mlflow": {
            "pid": state.pids.get("mlflow"),
            "url": tracking_uri(state),
            "answers": alive(state.pids.get("mlflow")) and mlflow_answers(state),
        },
    }


def _redacted(url: str) -> str:
    from pipeline.redaction import redact_url

    return redact_url(url)


def is_up(state: StackState) -> bool:
    return all(service["answers"] for service in health(state).values())


def up(
    root: Path,
    *,
    postgres_url: str | None = None,
    db_prefix: str = "crispml",
    s3_port: int | None = None,
    mlflow_port: int | None = None,
    postgres_port: int | None = None,
    configure_dvc: bool = True,
    timeout: float = 120,
    log: Callable[[str], None] = lambda line: None,
) -> StackState:
    """Start what does not run yet and wait until every service answers."""
    root = root.resolve()
    previous = load_state(root)
    if previous is not None and is_up(previous):
        log("stack: already up")
        return previous
    if previous is not None:
        log("stack: not (fully) up; starting it")
        _stop_services(previous, log)
    folder = root / STACK_DIR
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    if previous is not None:
        key_id, secret = previous.access_key_id, previous.secret_access_key
    else:
        key_id, secret = new_credentials()

    def port(asked: int | None, before: int | None) -> int:
        if asked:
            return asked
        return before if before and port_free(before) else free_port()

    external = postgres_url or os.environ.get(POSTGRES_URL_VARIABLE) or None
    if external is None and previous is not None and not previous.managed_postgres:
        external = previous.postgres_url
    state = StackState(
        root=str(root),
        s3_port=port(s3_port, previous and previous.s3_port),
        mlflow_port=port(mlflow_port, previous and previous.mlflow_port),
        access_key_id=key_id,
        secret_access_key=secret,
        postgres_url=external or "",
        managed_postgres=external is None,
        db_prefix=previous.db_prefix if previous and db_prefix == "crispml" else db_prefix,
        remotes=dvc_remotes(root),
    )
    save_state(state)
    logs = folder / "logs"
    try:
        log(f"stack: S3 endpoint (moto) on {s3_endpoint(state)}")
        state.pids["s3"] = spawn(moto_command(state.s3_port), logs / "s3.log", os.environ, folder)
        save_state(state)
        if state.managed_postgres:
            before = previous and previous.managed_postgres and previous.postgres_url
            pg_port = postgres_port or _port_of(before) or free_port()
            log(f"stack: PostgreSQL of its own on {HOST}:{pg_port}")
            state.postgres_url = start_own_postgres(root, pg_port, log)
        else:
            log(f"stack: PostgreSQL at {_redacted(state.postgres_url)}")
        save_state(state)
        wait_until(
            lambda: postgres_answers(state.postgres_url),
            "PostgreSQL",
            timeout,
            postgres_folder(root) / "postgres.log" if state.managed_postgres else None,
        )
        create_databases(state)
        wait_until(lambda: s3_answers(state), "the S3 endpoint", timeout, logs / "s3.log")
        create_buckets(state)
        restored = load_buckets(state)
        if restored:
            log(f"stack: {restored} objects put back into the buckets")
        log(f"stack: MLflow server on {tracking_uri(state)}")
        state.pids["mlflow"] = spawn(
            mlflow_command(state.mlflow_port, _mlflow_executable()),
            logs / "mlflow.log",
            mlflow_environment(state, os.environ),
            folder,
        )
        save_state(state)
        wait_until(lambda: mlflow_answers(state), "the MLflow server", timeout, logs / "mlflow.log")
        if configure_dvc and (root / ".dvc").is_dir():
            keep_dvc_config(root)
            for command in dvc_config_commands(state):
                _run(command, root, "configuring the DVC remote")
    except BaseException:
        _stop_services(state, log)
        raise
    return state


def _port_of(url: str | bool | None) -> int | None:
    if not url:
        return None
    from sqlalchemy.engine import make_url

    return make_url(str(url)).port


def _stop_services(state: StackState, log: Callable[[str], None]) -> None:
    if "mlflow" in state.pids:
        stop_process(state.pids.pop("mlflow"))
    if "s3" in state.pids:
        if alive(state.pids["s3"]) and s3_answers(state):
            try:
                saved = save_buckets(state)
                log(f"stack: {saved} objects saved from the buckets")
            except Exception as error:  # a failed save must not block the stop
                log(f"stack: could not save the buckets: {error}")
        stop_process(state.pids.pop("s3"))
    if state.managed_postgres:
        stop_own_postgres(Path(state.root))
    save_state(state)


def down(root: Path, *, purge: bool = False, log: Callable[[str], None] = lambda line: None):
    """Stop every service; with `purge`, also drop the databases and remove the data."""
    root = root.resolve()
    state = load_state(root)
    if state is None:
        log("stack: not up (no state)")
        return None
    if purge and not state.managed_postgres and postgres_answers(state.postgres_url):
        drop_databases(state)
        log("stack: databases dropped")
    _stop_services(state, log)
    restore_dvc_config(root)
    if purge:
        shutil.rmtree(root / STACK_DIR, ignore_errors=True)
        log(f"stack: removed {root / STACK_DIR}")
    # Otherwise the state stays: the next `up` reuses its ports, credentials and server.
    log("stack: down")
    return state
