"""A write interrupted halfway leaves neither a half file nor a temporary one behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io import atomic_dir, atomic_path, write_json


def test_failed_file_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert list(tmp_path.iterdir()) == [target]


def test_failed_dir_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "frame_1.parquet").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_dir_write_swaps_in_complete_content(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    target.mkdir()
    (target / "stale").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new").write_text("x")
    assert [p.name for p in target.iterdir()] == ["new"]
