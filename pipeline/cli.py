"""`crispml`: one command per CRISP-DM step, plus the operations around them.

DVC stages call these commands; people call them too. Exit codes mean something
(see `crispml exit-codes`), so CI can tell a bad input from a failed gate from a bug.
Heavy libraries are imported inside each command so that `--help` answers at once.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from pipeline.errors import EXIT_CODES, CrispError

ROOT_OPTION = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Repository root (default: the nearest folder above with params.yaml).",
)


def env_option(help: str) -> Callable:
    """`--env NAME`, for commands that act on one environment other than the active one."""
    return click.option("--env", "env", default=None, help=help)


def settings_for(root: Path | None, env: str | None = None):
    from pipeline.config import find_root, load_settings

    return load_settings(find_root(root), env=env)


def fail(error: CrispError) -> NoReturn:
    """One line on stderr and the error's own exit code: no traceback for a known failure."""
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


def stage(name: str | Callable[..., str]) -> Callable:
    """Wrap a step: load settings, measure wall/CPU/memory, turn CrispError into an exit code."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(root: Path | None, **kwargs: Any) -> None:
            from pipeline.layout import Layout
            from pipeline.perf import measured

            try:
                settings = settings_for(root)
                label = name(**kwargs) if callable(name) else name
                with measured(label, Layout(settings.root).perf) as record:
                    result = function(settings, **kwargs)
                    record["env"] = settings.env
                if result is not None:
                    click.echo(json.dumps(result, indent=2, default=str))
            except CrispError as error:
                fail(error)

        return ROOT_OPTION(wrapper)

    return decorate


# Commands outside the nine steps, by the module that adds them (`add_commands(cli)`).
# They load on first use: a stage then imports only its own code, so its DVC deps (the
# import closure, checked by tests/test_dvc_deps.py) do not grow with every operation.
LAZY_COMMANDS = {
    "alias": "pipeline.gitops.commands",  # alias promote|history|rollback
    "mr-report": "pipeline.gitops.commands",
    "ci": "pipeline.gitops.commands",  # ci setup|local|continuous-training
    "contract": "pipeline.contract_inference",  # contract infer
    "shadow": "pipeline.shadow",  # shadow report|promote
    "replay": "pipeline.replay",
}


class LazyGroup(click.Group):
    """A click group whose operations commands are imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            import importlib

            module = importlib.import_module(LAZY_COMMANDS[cmd_name])
            scratch = click.Group()
            module.add_commands(scratch)
            for name, command in scratch.commands.items():
                self.commands.setdefault(name, command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crispml")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def cli(verbose: bool) -> None:
    """CrispML: the nine CRISP-DM methods as reproducible, auditable steps.

    The usual way to run the steps is `dvc repro`, which calls these commands in
    order and skips what has not changed. Run one by hand to debug it.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command()
@stage("source")
def source(settings) -> dict:
    """Fingerprint the data behind the source, so DVC re-runs ingest exactly when it changed."""
    from pipeline import sources as step

    return step.run(settings)


@cli.command()
@stage("ingest")
def ingest(settings) -> dict:
    """Read the source, check the data contract, cut time frames, sample (data understanding)."""
    from pipeline import ingest as step

    return step.run(settings)


@cli.command()
@stage("prepare")
def prepare(settings) -> dict:
    """Clean the data and apply the environment's privacy filter (data preparation)."""
    from pipeline import prepare as step

    return step.run(settings)


@cli.command()
@stage("curate")
def curate(settings) -> dict:
    """Split the training frames and fit the feature transformer (data preparation)."""
    from pipeline import curate as step

    return step.run(settings)


@cli.command()
@stage("train")
def train(settings) -> dict:
    """Fit the configured algorithm and save it as an MLflow model (modeling)."""
    from pipeline import train as step

    return step.run(settings)


@cli.command()
@stage("report")
def report(settings) -> dict:
    """Metrics, cost-based threshold, slices and DVC plots on the test frame (evaluation)."""
    from pipeline import report as step

    return step.run(settings)


@cli.command()
@stage("register")
def register(settings) -> dict:
    """Log to MLflow, register the model, apply the gate, move the alias if it passes."""
    from pipeline import register as step

    return step.run(settings)


FRAMES_OPTION = click.option(
    "--frame",
    "frames",
    type=click.IntRange(min=1),
    multiple=True,
    help="Frame number; repeat for several (default: every frame of frames.score).",
)


def _frames_stage(step: str) -> Callable[..., str]:
    """The perf name: `score` for the stage's run over frames.score, `score_7` for one frame."""
    return lambda frames: "_".join([step, *map(str, frames)])


def _frames(settings, frames: tuple[int, ...]) -> list[int]:
    return list(frames) or list(settings.frames.score)


@cli.command()
@FRAMES_OPTION
@stage(_frames_stage("score"))
def score(settings, frames: tuple[int, ...]) -> dict:
    """Batch-score frames with the alias holder and store every score with lineage."""
    from pipeline import score as step

    return {"frames": step.run_frames(settings, _frames(settings, frames))}


@cli.command()
@FRAMES_OPTION
@stage(_frames_stage("label"))
def label(settings, frames: tuple[int, ...]) -> dict:
    """Import the ground truth for scored frames (idempotent upsert)."""
    from pipeline import label as step

    return {"frames": step.run_frames(settings, _frames(settings, frames))}


@cli.command()
@stage("verify")
def verify(settings) -> dict:
    """Evidently drift and realised quality per frame and overall, with the verify gate."""
    from pipeline import verify as step

    return step.run(settings)


@cli.command()
@ROOT_OPTION
@click.argument("which", type=click.Choice(["register", "verify"]), default="register")
def gate(root: Path | None, which: str) -> None:
    """Exit 5 when the last register (or verify) gate failed: the check CI runs."""
    from pipeline.io import read_json
    from pipeline.layout import Layout

    try:
        settings = settings_for(root)
        layout = Layout(settings.root)
        path = layout.gate if which == "register" else layout.verify_summary
        if not path.is_file():
            raise CrispError(f"{path} does not exist: run the {which} stage first")
        data = read_json(path)
        verdict = data if which == "register" else data["gate"]
        if verdict["passed"]:
            click.echo(f"{which} gate passed")
            return
        click.echo(f"{which} gate failed: " + "; ".join(verdict["reasons"]), err=True)
        sys.exit(5)
    except CrispError as error:
        fail(error)


@cli.group()
def env() -> None:
    """Show or switch the active environment (the `env` key of params.yaml)."""


@env.command("show")
@ROOT_OPTION
def env_show(root: Path | None) -> None:
    """Print the active environment and its resolved overlay."""
    try:
        settings = settings_for(root)
    except CrispError as error:
        fail(error)
    click.echo(settings.env)
    click.echo(json.dumps(settings.environment.model_dump(mode="json", by_alias=True), indent=2))


@env.command("use")
@ROOT_OPTION
@click.argument("name")
def env_use(root: Path | None, name: str) -> None:
    """Make NAME the active environment; DVC then re-runs what depends on it."""
    from pipeline.config import PARAMS_FILE, find_root, load_settings

    try:
        folder = find_root(root)
        load_settings(folder, env=name)  # refuse an environment that does not load
        path = folder / PARAMS_FILE
        text = path.read_text()
        new, count = re.subn(r"(?m)^env:.*$", f"env: {name}", text, count=1)
        if count != 1:
            raise CrispError(f"{path} has no top-level 'env:' line to change")
        path.write_text(new)
    except CrispError as error:
        fail(error)
    click.echo(f"active environment: {name}")


@cli.group()
def store() -> None:
    """Score store operations."""


@store.command("migrate")
@ROOT_OPTION
def store_migrate(root: Path | None) -> None:
    """Create or upgrade the score store schema to the newest revision."""
    from pipeline.store import ScoreStore

    try:
        settings = settings_for(root)
        target = ScoreStore(settings.store_url)
        revision = target.migrate()
        click.echo(f"{target.safe_url}: schema at revision {revision}")
    except CrispError as error:
        fail(error)


@store.command("pseudonymise")
@ROOT_OPTION
@env_option("Environment whose rows to rewrite (default: the active one).")
@click.option("--dry-run", is_flag=True, help="Count what would change; write nothing.")
def store_pseudonymise(root: Path | None, env: str | None, dry_run: bool) -> None:
    """Replace the raw record ids of an environment's scores and labels by pseudonyms.

    Run it once after switching privacy.pseudonymise_ids on for an environment whose
    store already holds scores, with the key the pipeline uses (the variable named by
    privacy.key_env): until then score, label and the service refuse to write. Batch
    score ids that were a hash of the raw id get random ones. One transaction (on
    PostgreSQL it locks out writers meanwhile; on SQLite stop the service first);
    running it again changes nothing.
    """
    import dataclasses

    from pipeline.errors import ConfigError
    from pipeline.privacy import pseudonym, pseudonymisation_key
    from pipeline.store import ScoreStore
    from pipeline.store.pseudonymise import pseudonymise_store

    try:
        settings = settings_for(root, env)
        privacy = settings.environment.privacy
        if not privacy.pseudonymise_ids:
            raise ConfigError(
                f"privacy.pseudonymise_ids is off for environment {settings.env!r}: its "
                "writers store raw ids, which pseudonymised rows would never join"
            )
        key = pseudonymisation_key(privacy)
        target = ScoreStore(settings.store_url)
        try:
            target.migrate()
            done = pseudonymise_store(
                target, settings.env, lambda ids: [pseudonym(i, key) for i in ids], dry_run=dry_run
            )
        finally:
            target.dispose()
    except CrispError as error:
        fail(error)
    click.echo(json.dumps(dataclasses.asdict(done), indent=2))


@cli.command("reports")
@ROOT_OPTION
def reports(root: Path | None) -> None:
    """Print where the reports of the last run are, for a browser or an editor."""
    from pipeline.layout import Layout

    try:
        settings = settings_for(root)
    except CrispError as error:
        fail(error)
    layout = Layout(settings.root)
    entries = [
        ("metrics (test frame)", layout.metrics),
        ("metrics per slice", layout.slices),
        ("quality gate", layout.gate),
        ("registered model", layout.registered),
        ("privacy report", layout.privacy_report),
        ("verification summary", layout.verify_summary),
    ]
    click.echo(f"environment: {settings.env}")
    for title, path in entries:
        state = "" if path.exists() else "  (not produced yet)"
        click.echo(f"  {title:<26} {path.relative_to(settings.root)}{state}")
    pages = sorted(layout.verify_dir.glob("*.html")) if layout.verify_dir.is_dir() else []
    click.echo(
        f"  Evidently HTML reports     {len(pages)} in "
        f"{layout.verify_dir.relative_to(settings.root)}/"
    )
    for page in pages:
        click.echo(f"    {page.as_uri()}")
    click.echo("  DVC plots                  run `dvc plots show` and open dvc_plots/index.html")
    from pipeline.redaction import redact_url

    # The URI may hold a password: printed redacted, so the line is safe to paste.
    click.echo(
        f"  MLflow                     mlflow ui --backend-store-uri "
        f"{redact_url(settings.tracking_uri)}"
    )


@cli.command("exit-codes")
def exit_codes() -> None:
    """List the exit codes and what each one means."""
    for code, meaning in sorted(EXIT_CODES.items()):
        click.echo(f"{code}  {meaning}")


@cli.command()
@ROOT_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--model-uri",
    default=None,
    help="models:/<name>@<alias>, models:/<name>/<n> or "
    "a local model folder (default: the environment's registry alias).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on the one port, each with its own model and micro-batcher; "
    "more than 1 needs a PostgreSQL store.",
)
def serve(root: Path | None, host: str, port: int, model_uri: str | None, workers: int) -> None:
    """Online scoring service: every answered score is stored first (docs at /docs)."""
    from pipeline.service.server import run

    try:
        run(root, host, port, model_uri, workers=workers)
    except CrispError as error:
        fail(error)


@cli.group()
def warm() -> None:
    """The warm process that stage commands run in (see pipeline/warm.py).

    The first stage command starts it in the background; later ones run in a fork of
    it, with pandas, scikit-learn, MLflow and Evidently already imported. It leaves
    after CRISPML_WARM_IDLE_SECONDS (300) without a command. CRISPML_WARM_START=0 runs
    every command in its own process instead.
    """


@warm.command("status")
def warm_status() -> None:
    """List this user's warm processes (exit 1 when none runs)."""
    from pipeline import warm as warm_start

    found = warm_start.running()
    click.echo(json.dumps(found, indent=2))
    if not found:
        sys.exit(1)


@warm.command("stop")
def warm_stop() -> None:
    """Stop every warm process of this user."""
    from pipeline import warm as warm_start

    click.echo(f"asked {warm_start.stop_all()} warm process(es) to stop")


@cli.group()
def stack() -> None:
    """The team's services on this machine: S3 (moto), PostgreSQL, an MLflow server.

    `eval "$(crispml stack up)"` starts them in the background (state, data and logs in
    .crispml/stack/) and exports the variables that point MLflow, DVC and the score
    store at them; the same variables point at a company's real services instead.
    """


def _stack_root(root: Path | None) -> Path:
    from pipeline.config import find_root

    return find_root(root)


def _stack_log(line: str) -> None:
    click.echo(line, err=True)


@stack.command("up")
@ROOT_OPTION
@click.option(
    "--postgres-url",
    default=None,
    help="Use this PostgreSQL server (a SQLAlchemy URL; default: $CRISPML_STACK_POSTGRES_URL, "
    "else a cluster of its own in .crispml/stack/postgres, which needs initdb).",
)
@click.option(
    "--db-prefix",
    default="crispml",
    show_default=True,
    help="Prefix of the databases it creates (<prefix>_mlflow, <prefix>_scores, ...).",
)
@click.option("--s3-port", type=click.IntRange(1, 65535), default=None, help="Default: free.")
@click.option("--mlflow-port", type=click.IntRange(1, 65535), default=None, help="Default: free.")
@click.option(
    "--postgres-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of its own cluster (default: free).",
)
@click.option(
    "--dvc-config/--no-dvc-config",
    default=True,
    show_default=True,
    help="Point the DVC remotes at the S3 endpoint in .dvc/config.local.",
)
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="Seconds per service."
)
def stack_up(
    root: Path | None,
    postgres_url: str | None,
    db_prefix: str,
    s3_port: int | None,
    mlflow_port: int | None,
    postgres_port: int | None,
    dvc_config: bool,
    timeout: float,
) -> None:
    """Start the stack (if it does not run) and print the variables to export.

    Progress goes to stderr, `export` lines to stdout: eval "$(crispml stack up)".
    Exit 6 when a service does not answer in time (its log's tail is shown).
    """
    from pipeline import stack as team

    try:
        state = team.up(
            _stack_root(root),
            postgres_url=postgres_url,
            db_prefix=db_prefix,
            s3_port=s3_port,
            mlflow_port=mlflow_port,
            postgres_port=postgres_port,
            configure_dvc=dvc_config,
            timeout=timeout,
            log=_stack_log,
        )
    except CrispError as error:
        fail(error)
    click.echo(team.shell_exports(team.exports(state)), nl=False)


@stack.command("status")
@ROOT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the services as JSON.")
def stack_status(root: Path | None, as_json: bool) -> None:
    """Say what runs; exit 0 when every service answers, 6 when the stack is not up."""
    from pipeline import stack as team

    try:
        state = team.load_state(_stack_root(root))
        if state is None:
            raise team.StackNotUp("the stack is not up (no .crispml/stack/state.json)")
        services = team.health(state)
    except CrispError as error:
        fail(error)
    if as_json:
        click.echo(json.dumps(services, indent=2))
    else:
        for name, service in services.items():
            word = "up" if service["answers"] else "DOWN"
            pid = f" (pid {service['pid']})" if service.get("pid") else ""
            click.echo(f"{name:<9} {word:<5} {service['url']}{pid}")
    if not all(service["answers"] for service in services.values()):
        sys.exit(team.StackNotUp.exit_code)


@stack.command("down")
@ROOT_OPTION
@click.option(
    "--purge",
    is_flag=True,
    help="Also drop its databases and delete .crispml/stack (buckets, cluster, logs).",
)
def stack_down(root: Path | None, purge: bool) -> None:
    """Stop the stack; buckets and databases are kept for the next `up` unless --purge."""
    from pipeline import stack as team

    try:
        team.down(_stack_root(root), purge=purge, log=_stack_log)
    except CrispError as error:
        fail(error)


def main() -> None:
    import os

    from pipeline import warm as warm_start

    # Only a fork of the warm process may say it is one; a command started afresh is not.
    os.environ.pop(warm_start.FORK_VARIABLE, None)
    code = warm_start.run_warm(sys.argv)
    if code is not None:
        sys.exit(code)
    cli(prog_name="crispml")


if __name__ == "__main__":
    main()
