"""The model as a file: saved, logged and loaded so that it carries data, never code.

A model is a scikit-learn Pipeline saved by MLflow in skops format. Whoever can write
the registry (or the DVC remote that restores `data/models/model`) can change its
files, so loading must never run code the file asks for:

* the model is built only from scikit-learn classes and numpy ufuncs (see
  `pipeline.features`), so it loads without `crispml` installed, and its
  requirements name only public packages;
* the types skops is told to trust beyond its defaults are `TRUSTED_TYPES`, a list
  kept here in the code, of numpy's and scikit-learn's own types. The list MLflow
  writes into the MLmodel file is checked against it and otherwise ignored: an
  artifact that asks for more is refused, as is any flavour other than skops (a
  pickle would run code on load);
* saving checks the same thing first, so a model that could not be loaded safely is
  never written in the first place.

Every stage and the service load through `load_model` here; nothing in the project
calls `pickle.load` or `mlflow.sklearn.load_model` on a model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

# Beyond skops' defaults, only types of numpy and scikit-learn themselves, which skops
# 0.16 leaves off its default list: a dtype (which array type a fitted SimpleImputer
# saw), the fitted trees of random forests and gradient boosting, and the
# `partial(check_array, ...)` gradient boosting keeps to pass its numeric columns
# through when it splits on categories. `functools.partial` is safe here because skops
# checks what it wraps against the same list: only `check_array` is on it. None of ours.
TRUSTED_TYPES: tuple[str, ...] = (
    "functools.partial",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "sklearn.utils.validation.check_array",
)
# What a model needs to load: public packages only, pinned to what trained it.
REQUIREMENTS = ("scikit-learn", "numpy", "pandas", "scipy", "skops")
SKOPS = "skops"
# MLmodel's fields that change on every save of the same model.
VOLATILE_MLMODEL_KEYS = ("utc_time_created", "model_uuid", "run_id", "artifact_path")
IGNORED_NAMES = frozenset({"__pycache__", ".DS_Store"})


class UntrustedModel(ConfigError):
    """A model file that would need more trust than `TRUSTED_TYPES` to load."""


def untrusted_types(model: Any) -> list[str]:
    """Types in `model` that skops would refuse with `TRUSTED_TYPES` (empty: loadable)."""
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return sorted(set(found) - set(TRUSTED_TYPES))


def check_loadable(model: Any) -> None:
    """Refuse to save a model that holds a type outside scikit-learn's and numpy's own."""
    extra = untrusted_types(model)
    if extra:
        raise UntrustedModel(
            f"the model holds {', '.join(extra)}: only scikit-learn components and numpy "
            "ufuncs may go into a model (pipeline.features), so that it loads without "
            "code of ours and without trusting what an artifact declares"
        )


def pip_requirements() -> list[str]:
    """What the model needs to load, pinned to what trained it; never a package of ours.

    Given explicitly because MLflow otherwise infers them by loading the model in a
    fresh Python subprocess, which costs seconds in every train and register.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def save_options(model: Any) -> dict[str, Any]:
    """The keyword arguments every `save_model`/`log_model` of a model passes to MLflow."""
    check_loadable(model)
    return {
        "serialization_format": SKOPS,
        "skops_trusted_types": list(TRUSTED_TYPES),
        "pip_requirements": pip_requirements(),
        "pyfunc_predict_fn": "predict_proba",
    }


def sklearn_flavor(model_dir: Path) -> dict[str, Any]:
    """The MLmodel file's sklearn flavour, refused unless it is skops within our trust."""
    import yaml

    meta = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
    flavor = (meta.get("flavors") or {}).get("sklearn")
    if not isinstance(flavor, dict):
        raise UntrustedModel(f"{model_dir}: the MLmodel file has no sklearn flavour")
    declared = flavor.get("serialization_format")
    if declared != SKOPS:
        raise UntrustedModel(
            f"{model_dir}: serialization_format is {declared!r}; only {SKOPS!r} is loaded "
            "(any other format can run code while loading)"
        )
    asked = _names(flavor.get("skops_trusted_types"))
    beyond = sorted(set(asked) - set(TRUSTED_TYPES))
    if beyond:
        raise UntrustedModel(
            f"{model_dir}: the artifact asks skops to trust {', '.join(beyond)}, beyond "
            f"{', '.join(TRUSTED_TYPES)}: refused"
        )
    return flavor


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        return [str(value)]
    return [str(item) for item in value]


def load_local(model_dir: Path) -> Any:
    """Load a model folder with skops and our own trust list, after checking its flavour."""
    import skops.io

    model_dir = Path(model_dir)
    flavor = sklearn_flavor(model_dir)
    file = model_dir / str(flavor.get("pickled_model", "model.skops"))
    if model_dir.resolve() not in file.resolve().parents:
        raise UntrustedModel(f"{model_dir}: the model file {file.name!r} lies outside the folder")
    return skops.io.load(file, trusted=list(TRUSTED_TYPES))


def load_model(uri: str | Path) -> Any:
    """Load a model from a folder or any MLflow URI (`models:/name/3`, `runs:/...`).

    A remote model is downloaded into a temporary folder first, so the file checked is
    the file loaded.
    """
    path = Path(str(uri))
    if "://" not in str(uri) and not str(uri).startswith("models:/") and path.is_dir():
        return load_local(path)
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="crispml-model-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=str(uri), dst_path=folder)
        return load_local(Path(local))


def artifact_hash(model_dir: Path) -> str:
    """sha256 of an MLflow model folder's content, blind to the fields a re-save changes.

    Every file counts, by relative path and bytes, except MLmodel's timestamp, uuid and
    run fields: the same trained model saved twice hashes the same.
    """
    import hashlib

    import yaml

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a model folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if any(part in IGNORED_NAMES for part in path.parts):
            continue
        data = path.read_bytes()
        if relative == "MLmodel":
            meta = yaml.safe_load(data) or {}
            for key in VOLATILE_MLMODEL_KEYS:
                meta.pop(key, None)
            data = yaml.safe_dump(meta, sort_keys=True).encode()
        digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()
