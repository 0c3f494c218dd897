"""reports/registered.json as a typed object: what `register` decided, read everywhere alike.

`register` writes it; `score`, `label`, `verify`, the promote job, the merge request
report and the scheduled job read it. They read it through `Registered.load`, never with
`.get` chains, so a missing or malformed receipt is one clear error that names the file
and the field, and a field added here is added for every reader at once.

    from pipeline.registered import Registered

    receipt = Registered.load(layout.registered)      # CrispError when missing/invalid
    serving = receipt.require_serving()               # GateFailed when nothing may serve
    serving.version, serving.run_id, serving.threshold
    receipt.gate.passed, receipt.gate.reasons
    receipt.decision                                  # "candidate" | "fallback" | "none"
    receipt.decided_version                           # what the alias should hold, or None

Versions are strings everywhere (MLflow's registry answers with strings); numbers in old
receipts are converted on load. Fields this module does not know are kept, so a newer
writer and an older reader can share a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import CrispError, GateFailed


class _Part(BaseModel):
    # Unknown fields are kept (a newer register may add some), numbers become strings
    # where a version is expected.
    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


class GateResult(_Part):
    """The register gate's verdict on the candidate (reports/gate.json holds the same)."""

    passed: bool
    reasons: list[str] = Field(default_factory=list)
    verdict: str | None = None
    candidate_pr_auc: float | None = None
    champion_pr_auc: float | None = None
    champion_version: str | None = None
    # Positives in the gate rows, and the paired bootstrap against the champion
    # (pipeline.evidence.Comparison.as_dict()) when there was one.
    positives: int | None = None
    comparison: dict[str, Any] | None = None


class Fallback(_Part):
    """Whether prod serves the model its fallback alias validated, and why (not)."""

    used: bool
    version: str | None = None
    from_alias: str | None = None
    reason: str | None = None
    # The history event when register moved the alias itself (CRISPML_DEFER_ALIAS unset).
    event: dict[str, Any] | None = None
    # The fallback model against the current champion on this environment's test frame
    # (pipeline.evidence.Comparison.as_dict()), when there was a champion to compare with.
    comparison: dict[str, Any] | None = None
    # What made the fallback model eligible: the lineage keys both versions share.
    lineage: dict[str, str] | None = None


class Serving(_Part):
    """The model that scores this environment's frames after this pipeline."""

    version: str
    run_id: str | None = None
    threshold: float
    pr_auc: float | None = None
    git_commit: str | None = None
    # When the version was registered (seconds since the epoch), for its age.
    created_at: float | None = None


class AliasSeen(_Part):
    """The alias holder when the gate judged the candidate (compare-and-set in promote)."""

    alias: str
    version: str | None = None


class Registered(_Part):
    """The whole receipt."""

    model_name: str
    alias: str
    candidate_version: str | None = None
    candidate_run_id: str | None = None
    alias_moved: bool = False
    alias_deferred: bool = False
    gate: GateResult
    fallback: Fallback | None = None
    serving: Serving | None = None
    tracking_uri: str | None = None
    source: str | None = None
    # The holder of `alias` that the gate compared with; promote refuses when it moved.
    alias_seen: AliasSeen | None = None
    # sha256 of the model artifact train wrote (pipeline.saved_model.artifact_hash), and
    # whether `candidate_version` is an earlier version with the same artifact, reused.
    artifact_sha256: str | None = None
    reused_version: bool = False

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(cls, path: Path) -> Registered:
        """Read and check the receipt; a missing or malformed file is a CrispError."""
        import json

        path = Path(path)
        if not path.is_file():
            raise CrispError(f"{path} does not exist: run the register stage first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise CrispError(f"{path} is not valid JSON: {error}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, where: str = "registered.json") -> Registered:
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                for e in error.errors()
            )
            raise CrispError(f"{where} is not a register receipt: {problems}") from None

    def write(self, path: Path) -> None:
        """Write atomically (temporary file and rename)."""
        from pipeline.io import write_json

        write_json(Path(path), self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    # ------------------------------------------------------------------ decisions

    @property
    def decision(self) -> Literal["candidate", "fallback", "none"]:
        """What the environment should serve: its own candidate, the fallback, or nothing new."""
        if self.gate.passed:
            return "candidate"
        if self.fallback is not None and self.fallback.used:
            return "fallback"
        return "none"

    @property
    def decided_version(self) -> str | None:
        if self.decision == "candidate":
            return self.candidate_version
        if self.decision == "fallback" and self.fallback is not None:
            return self.fallback.version
        return None

    def require_serving(self) -> Serving:
        """The model that may score; none holding the alias is a clear stop, not a guess."""
        if self.serving is None:
            raise GateFailed(
                f"no model version that can score this data holds alias @{self.alias}: "
                f"version {self.candidate_version} was rejected "
                f"({'; '.join(self.gate.reasons)})"
            )
        return self.serving
