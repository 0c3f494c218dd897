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


def main() -> None:
    cli(prog_name="crispml")


if __name__ == "__main__":
    main()
