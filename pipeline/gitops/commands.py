"""The click commands: `crispml alias ...`, `crispml mr-report`, `crispml ci ...`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipeline.cli import ROOT_OPTION, env_option, fail
from pipeline.errors import ConfigError, CrispError, GateFailed
from pipeline.gitops.common import (
    DEPLOY_ENV_FILE,
    PROMOTION_FILE,
    actor_from,
    client_for,
    settings_for,
)

ROOT = ROOT_OPTION
ENV = env_option("Environment whose alias to use (default: the active one in params.yaml).")


def challenger_alias(settings) -> str | None:
    """The environment's shadow alias (prod: prod-challenger), or None where there is none."""
    return settings.environment.registry.challenger_alias


def history_store(settings):
    """The store that keeps the alias history, with a warning when CI did not choose it.

    A CI job that did not run `crispml ci setup` has no CRISPML_STORE_URL, so the
    history would go to the overlay's default store: a SQLite file inside the job, gone
    with it. A warning, not a refusal: a rollback during an incident must still work.
    """
    from pipeline import registry
    from pipeline.gitops.setup import STORE_VARIABLE, store_url_variable

    if os.environ.get("CI") and not os.environ.get(STORE_VARIABLE):
        click.echo(
            f"warning: {STORE_VARIABLE} is not set in this CI job, so the alias history "
            f"goes to environments/{settings.env}/params.yaml's store, which a job may not "
            f"keep: run `crispml ci setup --env-file .crispml/ci.env` and source it first "
            f"(it applies {store_url_variable(settings.env)})",
            err=True,
        )
    return registry.history_store(settings)


# --------------------------------------------------------------------------- alias


@click.group("alias")
def alias_group() -> None:
    """Promote, show and roll back an environment's registry alias (@dev, @qa, @prod)."""


@alias_group.command("promote")
@ROOT
@ENV
def alias_promote(root: Path | None, env: str | None) -> None:
    """Move the alias to the version `register` decided on (CI's promote job).

    Where the environment has a challenger alias (prod), that alias moves instead and the
    model runs in shadow until `crispml shadow promote`. Refuses when the alias moved
    since the gate judged the candidate (another pipeline promoted meanwhile).
    Exit 5 when nothing of this commit may serve (own gate failed and no fallback).
    Writes reports/promotion.json and deploy.env (a GitLab dotenv report).
    """
    from pipeline import registry, tracking
    from pipeline.gitops.promotion import decide, deploy_variables, promote, promotion_message
    from pipeline.io import write_json
    from pipeline.registered import Registered

    try:
        settings = settings_for(root, env)
        path = settings.root / "reports" / "registered.json"
        receipt = Registered.load(path)
        if receipt.model_name != settings.registration.model_name:
            raise CrispError(f"{path} is about model {receipt.model_name!r}")
        if receipt.alias != settings.alias:
            raise CrispError(
                f"{path} was produced for @{receipt.alias}, not @{settings.alias}: "
                f"was the pipeline run with `crispml env use {settings.env}`?"
            )
        client = client_for(settings)
        with history_store(settings) as store:
            result = promote(
                client,
                store,
                settings.registration.model_name,
                settings.alias,
                settings.env,
                decide(receipt),
                tracking.git_commit(settings.root),
                actor_from(os.environ),
                os.environ.get("CI_PIPELINE_URL"),
                challenger_alias=challenger_alias(settings),
                lineage=registry.lineage_keys(settings.root),
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
        fail(error)


@alias_group.command("history")
@ROOT
@ENV
@click.option(
    "--alias",
    "alias_name",
    default=None,
    help="Any alias, e.g. prod-challenger (default: the environment's alias).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw history as JSON.")
def alias_history_command(
    root: Path | None, env: str | None, alias_name: str | None, as_json: bool
) -> None:
    """Show who moved the alias, when, to which version and why (oldest first).

    The history is the environment's (its store); an alias another environment moves,
    such as @qa seen from prod, has its history in that environment's store.
    """
    from pipeline import registry
    from pipeline.gitops.history import format_history

    try:
        settings = settings_for(root, env)
        client = client_for(settings)
        name, alias = settings.registration.model_name, alias_name or settings.alias
        with history_store(settings) as store:
            history = registry.alias_history(client, store, name, alias)
        holder = registry.alias_holder(client, name, alias)
        current = None if holder is None else str(holder.version)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "alias": alias,
                        "current": current,
                        "history": history,
                    },
                    indent=2,
                )
            )
            return
        click.echo(f"{name}@{alias}")
        click.echo(format_history(history, current))
    except CrispError as error:
        fail(error)


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
    from pipeline.gitops.rollbacks import rollback

    try:
        settings = settings_for(root, env)
        client = client_for(settings)
        with history_store(settings) as store:
            result = rollback(
                client,
                store,
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
        fail(error)


# --------------------------------------------------------------------------- mr-report


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
    help="Post to the merge request (default: when CRISPML_GITLAB_TOKEN is set).",
)
def mr_report(root: Path | None, target_ref: str | None, output: Path, post: bool | None) -> None:
    """Write the merge request report (params/metrics diff, gates, drift) and post it.

    The file is always written first, so the job artifact exists even when posting fails
    (exit 6). Posting updates the report's own note, found by its marker.
    """
    from pipeline.gitops.gitlab_api import TOKEN_VARIABLE, post_note
    from pipeline.gitops.mr_report import build_mr_report, resolve_target_ref

    try:
        settings = settings_for(root)
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
        fail(error)


# --------------------------------------------------------------------------- ci


@click.group("ci")
def ci_group() -> None:
    """Steps of the GitLab CI jobs (see .gitlab-ci.yml), and running them locally."""


@ci_group.command("setup")
@ROOT
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the shell lines that set the job's score store here (source it next).",
)
def ci_setup(root: Path | None, env_file: Path | None) -> None:
    """Check the job's CI variables; point DVC and the score store at the environment.

    A merge request pipeline always gets a throwaway store inside its job; an
    environment branch gets CRISPML_STORE_URL_<ENV>. See pipeline/gitops/setup.py.
    """
    from pipeline.config import find_root
    from pipeline.gitops.setup import setup_job

    try:
        summary = setup_job(find_root(root), os.environ, env_file=env_file)
        click.echo(json.dumps(summary, indent=2))
        if "warning" in summary:
            click.echo(f"warning: {summary['warning']}", err=True)
    except CrispError as error:
        fail(error)


@ci_group.command("local")
@ROOT
@click.argument("env", required=False)
@click.option(
    "--mr", "mr_target", default=None, help="Run this branch as a merge request into TARGET."
)
@click.option("--iid", type=int, default=1, show_default=True, help="The merge request's number.")
@click.option(
    "--source",
    type=click.Choice(["push", "web", "schedule", "api", "trigger"]),
    default="push",
    show_default=True,
    help="CI_PIPELINE_SOURCE of a branch pipeline (schedule: continuous training).",
)
@click.option(
    "--job", "jobs", multiple=True, help="A job to run (repeat; default: the pipeline's)."
)
@click.option("--manual", multiple=True, help="Run this manual job too (repeat).")
@click.option("--variable", "variables", multiple=True, help="KEY=VALUE for the jobs (repeat).")
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for MLflow, DVC remotes and stores (default: .crispml/ci-local).",
)
@click.option("--dry-run", is_flag=True, help="Print the gitlab-ci-local command only.")
def ci_local(
    root: Path | None,
    env: str | None,
    mr_target: str | None,
    iid: int,
    source: str,
    jobs: tuple[str, ...],
    manual: tuple[str, ...],
    variables: tuple[str, ...],
    state: Path | None,
    dry_run: bool,
) -> None:
    """Run ENV's pipeline (dev, qa, prod) of the real .gitlab-ci.yml with gitlab-ci-local.

    Exit code: gitlab-ci-local's (0 when every job passed).
    """
    from pipeline.config import find_root
    from pipeline.gitops.local import run_local

    try:
        extra = {}
        for item in variables:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--variable wants KEY=VALUE, not {item!r}")
            extra[key] = value
        code = run_local(
            find_root(root),
            env,
            mr_target,
            dry_run=dry_run,
            echo=click.echo,
            source=source,
            iid=iid,
            jobs=jobs,
            manual=manual,
            extra=extra,
            state=state,
        )
        sys.exit(code)
    except CrispError as error:
        fail(error)


def add_commands(cli: click.Group) -> None:
    """Attach the GitOps commands to the `crispml` group (called once from pipeline.cli).

    The scheduled job's command lives with continuous training itself
    (pipeline/continuous_training.py); it is attached here as `crispml ci
    continuous-training`, where .gitlab-ci.yml calls it.
    """
    from pipeline.continuous_training import continuous_training_command

    ci_group.add_command(continuous_training_command, "continuous-training")
    for command in (alias_group, mr_report, ci_group):
        cli.add_command(command)
