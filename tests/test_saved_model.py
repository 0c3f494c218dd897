"""A model carries data, never code: what it may hold, how it is saved, what loading refuses.

That every algorithm's model is built of trusted parts only is checked where those
models are built on a general table: tests/test_any_table.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from pipeline.saved_model import (
    TRUSTED_TYPES,
    UntrustedModel,
    load_model,
    pip_requirements,
    save_options,
    untrusted_types,
)

ROOT = Path(__file__).resolve().parents[1]


class Doubler(TransformerMixin, BaseEstimator):
    """A transformer of our own: exactly what a model must not hold."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X, dtype=float) * 2


def _frame(rows: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})
    return frame, (frame["a"] > 0).to_numpy().astype(int)


def _save(model, folder: Path) -> Path:
    import mlflow.sklearn

    mlflow.sklearn.save_model(model, str(folder), **save_options(model))
    return folder


def test_a_class_of_ours_inside_the_model_is_refused_at_save(tmp_path: Path) -> None:
    frame, y = _frame()
    model = make_pipeline(Doubler(), LogisticRegression()).fit(frame, y)
    assert any("Doubler" in name for name in untrusted_types(model))
    with pytest.raises(UntrustedModel, match="Doubler"):
        _save(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_saved_model_round_trips_and_names_no_package_of_ours(tmp_path: Path) -> None:
    frame, y = _frame()
    model = LogisticRegression().fit(frame, y)
    folder = _save(model, tmp_path / "model")
    loaded = load_model(folder)
    assert np.allclose(loaded.predict_proba(frame), model.predict_proba(frame))
    requirements = (folder / "requirements.txt").read_text()
    assert "crispml" not in requirements and "scikit-learn==" in requirements
    assert not any(r.startswith("crispml") for r in pip_requirements())
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert sorted(flavor["skops_trusted_types"]) == sorted(TRUSTED_TYPES)


def _tamper(folder: Path, **changes) -> None:
    path = folder / "MLmodel"
    meta = yaml.safe_load(path.read_text())
    meta["flavors"]["sklearn"].update(changes)
    path.write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"serialization_format": "cloudpickle"}, "serialization_format is 'cloudpickle'"),
        ({"serialization_format": "pickle"}, "serialization_format is 'pickle'"),
        ({"skops_trusted_types": ["numpy.dtype", "builtins.eval"]}, "builtins.eval"),
        ({"skops_trusted_types": "posix.system"}, "posix.system"),
        ({"pickled_model": "../model.skops"}, "outside the folder"),
    ],
)
def test_an_artifact_asking_for_more_trust_is_refused(
    tmp_path: Path, changes: dict, message: str
) -> None:
    """Whoever can write the registry must not be able to widen what loading trusts."""
    frame, y = _frame()
    folder = _save(LogisticRegression().fit(frame, y), tmp_path / "model")
    (tmp_path / "model.skops").write_bytes((folder / "model.skops").read_bytes())
    _tamper(folder, **changes)
    with pytest.raises(UntrustedModel, match=re.escape(message)):
        load_model(folder)


def test_loading_uses_our_trust_list_not_the_artifacts(tmp_path: Path) -> None:
    """An artifact declaring no trusted types still loads a forest: the list is ours."""
    from sklearn.ensemble import RandomForestClassifier

    frame, y = _frame()
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, y)
    folder = _save(model, tmp_path / "model")
    _tamper(folder, skops_trusted_types=[])
    assert np.allclose(load_model(folder).predict_proba(frame), model.predict_proba(frame))


def test_no_module_loads_a_pickle_or_bypasses_the_checked_loader() -> None:
    """Static: every model load in pipeline/ goes through pipeline.saved_model."""
    forbidden = re.compile(
        r"pickle\.loads?\(|joblib\.load\(|cloudpickle|mlflow\.sklearn\.load_model\("
        r"|mlflow\.pyfunc\.load_model\(|skops\.io\.loads?\("
    )
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name == "saved_model.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if forbidden.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    ("kind", "column"),
    [
        ("seconds", pd.Series([0.0, 21_600.0, 86_400.0 + 43_200.0, 3 * 86_400.0 + 64_800.0])),
        (
            "datetime",
            pd.Series(
                pd.to_datetime(
                    ["2024-01-01 00:00", "2024-03-02 06:00", "2024-07-09 12:00", "2025-01-01 18:00"]
                ).astype("datetime64[ns]")
            ),
        ),
    ],
)
def test_the_clock_is_sin_and_cos_of_the_time_of_day(kind: str, column: pd.Series) -> None:
    from pipeline.features import _time_of_day

    out = _time_of_day(kind).fit_transform(pd.DataFrame({"t": column}))
    expected = [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]
    assert np.allclose(out, expected, atol=1e-6)


def test_a_partial_of_anything_but_check_array_is_refused_on_load(tmp_path: Path) -> None:
    """`functools.partial` is trusted, what it wraps is still checked: plant `print`."""
    import functools

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    frame, y = _frame()
    folder = _save(LogisticRegression().fit(frame, y), tmp_path / "model")
    planted = make_pipeline(FunctionTransformer(functools.partial(print, end="")))
    assert "builtins.print" in untrusted_types(planted)
    skops.io.dump(planted, folder / "model.skops")
    with pytest.raises(Exception, match=r"builtins\.print"):
        load_model(folder)
