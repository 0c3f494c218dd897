"""GitOps around the DVC pipeline: what CI does for a branch, a merge request or a schedule.

The pipeline itself (`dvc repro`) knows nothing about Git branches. This package holds the
acts that belong to an environment's CI rather than to a stage, one module per concern:

* `setup`: `crispml ci setup`: check the job's variables, point DVC at the environment's
  remote and the job at its score store (a merge request always gets a throwaway one);
* `promotion`: `crispml alias promote`: move the alias (prod: its challenger) to the
  version `register` decided on, with a compare-and-set against concurrent pipelines;
* `fallback`: prod's fallback to the model @qa validated for the same code, params and
  data, scored against the champion on prod's test frame;
* `rollbacks` and `history`: `crispml alias rollback` / `crispml alias history`;
* `mr_report` and `gitlab_api`: the merge request report and its note;
* `local`: `crispml ci local`: the real .gitlab-ci.yml through gitlab-ci-local;
* `commands`: the click commands; `add_commands(cli)` attaches them.

The scheduled job (`crispml ci continuous-training`) lives in pipeline/continuous_training.py
and is attached under `ci` here.

Everything heavy (MLflow, pydantic, python-gitlab) is imported on first use, so that
importing this package (which `crispml --help` does) costs nothing: the names below are
resolved lazily from their modules.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "common": ("Runner", "actor_from", "PROMOTION_FILE", "DEPLOY_ENV_FILE"),
    "setup": (
        "remote_url_variable",
        "store_url_variable",
        "choose_store",
        "required_variables",
        "dvc_remotes",
        "setup_job",
        "reproduce_commands",
        "REVIEW_STORE_URL",
    ),
    "promotion": ("Decision", "decide", "promote", "promotion_message", "deploy_variables"),
    "fallback": ("choose_fallback",),
    "rollbacks": ("ROLLBACK_PREFIX", "serving_stack", "rollback"),
    "history": ("format_history",),
    "mr_report": ("REPORT_MARKER", "resolve_target_ref", "build_mr_report"),
    "gitlab_api": ("TOKEN_VARIABLE", "post_note"),
    "local": ("build_command", "run_local", "evaluate", "workflow_variables"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "DEPLOY_ENV_FILE",
    "PROMOTION_FILE",
    "REPORT_MARKER",
    "REVIEW_STORE_URL",
    "ROLLBACK_PREFIX",
    "TOKEN_VARIABLE",
    "Decision",
    "Runner",
    "actor_from",
    "build_command",
    "build_mr_report",
    "choose_fallback",
    "choose_store",
    "decide",
    "deploy_variables",
    "dvc_remotes",
    "evaluate",
    "format_history",
    "post_note",
    "promote",
    "promotion_message",
    "remote_url_variable",
    "reproduce_commands",
    "required_variables",
    "resolve_target_ref",
    "rollback",
    "run_local",
    "serving_stack",
    "setup_job",
    "store_url_variable",
    "workflow_variables",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from pipeline.gitops.common import DEPLOY_ENV_FILE, PROMOTION_FILE, Runner, actor_from
    from pipeline.gitops.fallback import choose_fallback
    from pipeline.gitops.gitlab_api import TOKEN_VARIABLE, post_note
    from pipeline.gitops.history import format_history
    from pipeline.gitops.local import build_command, evaluate, run_local, workflow_variables
    from pipeline.gitops.mr_report import REPORT_MARKER, build_mr_report, resolve_target_ref
    from pipeline.gitops.promotion import (
        Decision,
        decide,
        deploy_variables,
        promote,
        promotion_message,
    )
    from pipeline.gitops.rollbacks import ROLLBACK_PREFIX, rollback, serving_stack
    from pipeline.gitops.setup import (
        REVIEW_STORE_URL,
        choose_store,
        dvc_remotes,
        remote_url_variable,
        reproduce_commands,
        required_variables,
        setup_job,
        store_url_variable,
    )
