"""Where every artifact lives, relative to the repository root.

dvc.yaml names the same paths; `tests/test_layout.py` checks that the two agree, so
a path is changed in one place and caught in the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    def _p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # data
    @property
    def source_fingerprint(self) -> Path:
        return self._p("data", "source.json")

    @property
    def source_state(self) -> Path:
        """Per-machine cache of the source's hash (size and mtime), never committed."""
        return self._p(".crispml", "source-state.json")

    @property
    def ingested(self) -> Path:
        return self._p("data", "ingested")

    @property
    def prepared(self) -> Path:
        return self._p("data", "prepared")

    @property
    def curated(self) -> Path:
        return self._p("data", "curated")

    @property
    def features(self) -> Path:
        return self._p("data", "models", "features.json")

    @property
    def model(self) -> Path:
        return self._p("data", "models", "model")

    @property
    def scored(self) -> Path:
        return self._p("data", "scored")

    @property
    def labeled(self) -> Path:
        return self._p("data", "labeled")

    # reports
    @property
    def reports(self) -> Path:
        return self._p("reports")

    @property
    def privacy_report(self) -> Path:
        return self._p("reports", "privacy.json")

    @property
    def ingest_report(self) -> Path:
        return self._p("reports", "ingest.json")

    @property
    def metrics(self) -> Path:
        return self._p("reports", "metrics.json")

    @property
    def slices(self) -> Path:
        return self._p("reports", "slices.json")

    @property
    def plots(self) -> Path:
        return self._p("reports", "plots")

    @property
    def gate(self) -> Path:
        return self._p("reports", "gate.json")

    @property
    def registered(self) -> Path:
        return self._p("reports", "registered.json")

    @property
    def verify_dir(self) -> Path:
        return self._p("reports", "verify")

    @property
    def verify_summary(self) -> Path:
        return self._p("reports", "verify.json")

    @property
    def perf(self) -> Path:
        return self._p("reports", "perf")

    @staticmethod
    def frame_name(frame: int) -> str:
        return f"frame_{frame}"  # unpadded: DVC templating cannot pad ${item}

    def frame_file(self, folder: Path, frame: int, suffix: str = ".parquet") -> Path:
        return folder / f"{self.frame_name(frame)}{suffix}"
