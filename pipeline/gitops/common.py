"""What every GitOps module shares: running a command, settings, the registry client."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import CrispError

if TYPE_CHECKING:
    from pipeline.config import Settings

PROMOTION_FILE = Path("reports") / "promotion.json"
DEPLOY_ENV_FILE = Path("deploy.env")

Runner = Callable[..., subprocess.CompletedProcess]


def run(
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


def settings_for(root: Path | None, env: str | None = None) -> Settings:
    from pipeline.config import find_root, load_settings

    return load_settings(find_root(root), env=env)


def client_for(settings: Settings) -> Any:
    from pipeline import tracking

    return tracking.configure(settings)


def short(commit: str | None) -> str:
    return (commit or "unknown")[:12]


def actor_from(environ: Mapping[str, str]) -> str:
    """Who moved an alias: the GitLab user and pipeline in CI, the login name elsewhere."""
    user = environ.get("GITLAB_USER_LOGIN") or environ.get("USER") or "unknown"
    pipeline = environ.get("CI_PIPELINE_ID")
    return f"ci:{user}:pipeline-{pipeline}" if pipeline else f"cli:{user}"


def read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
