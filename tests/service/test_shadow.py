"""Champion and challenger against a real `crispml serve`, a real registry and store.

The module's server serves `@shadow` (version 1) and, once `@shadow-challenger`
(version 2) exists, scores every request with both: it answers with version 1 and
stores both scores. Labels then feed `/v1/report` and `crispml shadow report`, and
`crispml shadow promote` refuses, then promotes; `crispml alias rollback` still works
with a challenger present. The tests run in file order and build on each other.

The monitoring files are checked against the /metrics this server really exports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline.store import ScoreStore

from .conftest import MAIN_ROOT, TOKEN, Registry, Server, make_repo, sample_records

pytestmark = pytest.mark.slow

ENV = "svcshadow"
ALIAS = "shadow"
CHALLENGER = f"{ALIAS}-challenger"
MIN_LABELLED = 400
MONITORING = MAIN_ROOT / "environments" / "base" / "monitoring"


@dataclass
class Shadow:
    server: Server
    store_url: str
    root: Path
    registry: Registry

    def store(self) -> ScoreStore:
        return ScoreStore(self.store_url)

    def history(self, alias: str) -> list[dict]:
        """The alias history the CLI keeps, in the repository's store."""
        from pipeline.registry import alias_history

        store = self.store()
        try:
            return alias_history(_mlflow(self.registry), store, self.registry.model_name, alias)
        finally:
            store.dispose()

    def pairs(self, **filters: Any):
        store = self.store()
        try:
            return store.shadow_pairs(ENV, self.registry.model_name, **filters)
        finally:
            store.dispose()

    def wait_for_pairs(self, count: int, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pairs = self.pairs()
            if len(pairs) >= count:
                return pairs
            time.sleep(0.1)
        raise AssertionError(f"{len(self.pairs())} shadow pairs, expected {count}")

    def crispml(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real CLI, with the server's registry and the repository's own store."""
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args, "--root", str(self.root)],
            env=self.server.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def wait_for_models(self, champion: str, challenger: str | None, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            ready = httpx.get(self.server.url + "/readyz", timeout=5).json()
            seen = (
                ready["model"]["model_version"],
                (ready.get("challenger") or {}).get("model_version"),
            )
            if seen == (champion, challenger):
                return
            time.sleep(0.1)
        raise AssertionError(f"serving {seen}, expected {(champion, challenger)}")


@pytest.fixture(scope="module")
def shadow(model_registry: Registry, tmp_path_factory) -> Iterator[Shadow]:
    folder = tmp_path_factory.mktemp("shadow")
    url = f"sqlite:///{folder / 'scores.db'}"
    root = make_repo(folder / "repo", env=ENV, store_url=url, alias=ALIAS)
    overlay_path = root / "environments" / ENV / "params.yaml"
    overlay = yaml.safe_load(overlay_path.read_text())
    overlay["registry"]["shadow"] = {"min_labelled_scores": MIN_LABELLED, "auto_promote": True}
    # A small test table: ~5 % positives, so fewer positives than production needs; the
    # margin is the environment's own register gate.
    overlay["gates"]["evidence"] = {"min_positives": 10, "resamples": 400, "seed": 0}
    overlay["gates"]["register"]["max_pr_auc_drop"] = 0.05
    overlay_path.write_text(yaml.safe_dump(overlay))
    model_registry.move_alias(ALIAS, 1, store_url=url)
    server = Server(
        root,
        model_registry,
        env_vars={
            "CRISPML_API_TOKEN": TOKEN,
            "CRISPML_SERVICE_RELOAD_INTERVAL": "0.3",
            "CRISPML_SERVICE_LABEL_AGE_TTL": "0",
        },
    )
    server.start().wait_ready()
    try:
        yield Shadow(server, url, root, model_registry)
    finally:
        server.stop()


def _metrics(server: Server) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _label_all(client: httpx.Client, answers: list[dict], labels: dict[str, int]) -> None:
    body = [{"score_id": a["score_id"], "label": labels[a["record_id"]]} for a in answers]
    for start in range(0, len(body), 500):
        reply = client.post("/v1/labels", json={"labels": body[start : start + 500]})
        assert reply.status_code == 200, reply.text


def _score(client: httpx.Client, records: list[dict]) -> list[dict]:
    answers = []
    for start in range(0, len(records), 100):
        reply = client.post("/v1/score", json=records[start : start + 100])
        assert reply.status_code == 200, reply.text
        answers += reply.json()
    return answers


def test_without_a_challenger_nothing_is_shadowed(shadow: Shadow) -> None:
    record = sample_records(shadow.registry, 1)[0]
    with shadow.server.client() as client:
        assert client.post("/v1/score", json=record).json()["model_version"] == "1"
    assert shadow.pairs().empty
    assert _metrics(shadow.server)[("crispml_challenger_loaded", frozenset())] == 0


def test_the_champion_answers_and_both_scores_are_stored_with_the_flag(shadow: Shadow) -> None:
    shadow.registry.move_alias(CHALLENGER, 2, store_url=shadow.store_url)
    shadow.wait_for_models("1", "2")  # hot reload: the challenger appeared
    records = sample_records(shadow.registry, 5, start=1)
    with shadow.server.client() as client:
        answers = client.post("/v1/score", json=records).json()
    assert {a["model_version"] for a in answers} == {"1"}  # the champion answers
    assert {a["threshold"] for a in answers} == {shadow.registry.version(1)["threshold"]}
    pairs = shadow.wait_for_pairs(5)
    assert sorted(pairs["score_id"]) == sorted(a["score_id"] for a in answers)
    pairs = pairs.set_index("score_id").loc[[a["score_id"] for a in answers]]  # answer order
    assert list(pairs["champion_score"]) == [a["score"] for a in answers]
    assert set(pairs["champion_version"]) == {"1"} and set(pairs["challenger_version"]) == {"2"}
    # Version 2 is another model (C=0.05, threshold 0.3): its own scores and decisions.
    assert (pairs["challenger_score"] != pairs["champion_score"]).all()
    threshold = shadow.registry.version(2)["threshold"]
    assert list(pairs["challenger_decision"]) == [
        int(s >= threshold) for s in pairs["challenger_score"]
    ]
    store = shadow.store()
    try:
        online = store.online_scores_with_labels(
            ENV, shadow.registry.model_name, "2", labeled_only=False
        )
        assert len(online) == 5 and online["shadow"].all()
        champion = store.online_scores_with_labels(
            ENV, shadow.registry.model_name, "1", labeled_only=False
        )
        assert not champion["shadow"].any() and len(champion) == 6
        stored = store.get_score(online["score_id"].iloc[0])
        assert stored["run_id"] == shadow.registry.version(2)["run_id"]
        assert stored["shadow_of"] in {a["score_id"] for a in answers}
    finally:
        store.dispose()
    with shadow.server.client() as client:  # the audit endpoint shows the flag
        audit = client.get(f"/v1/scores/{online['score_id'].iloc[0]}").json()
        assert audit["shadow"] is True and audit["model_version"] == "2"
        assert client.get(f"/v1/scores/{answers[0]['score_id']}").json()["shadow"] is False
    metrics = _metrics(shadow.server)
    assert metrics[("crispml_shadow_scores_total", frozenset({("model_version", "2")}))] == 5
    assert metrics[("crispml_challenger_loaded", frozenset())] == 1
    for role, version in (("champion", "1"), ("challenger", "2")):
        key = frozenset({("role", role), ("model_version", version)})
        assert 0 < metrics[("crispml_model_age_seconds", key)] < 3600


def test_report_and_promotion_follow_the_labelled_evidence(shadow: Shadow) -> None:
    registry = shadow.registry
    items = registry.records[10:760]
    with shadow.server.client(TOKEN) as client:
        answers = _score(client, [item["record"] for item in items])
        truth = {a["record_id"]: item["label"] for a, item in zip(answers, items, strict=True)}
        shadow.wait_for_pairs(5 + len(items))
        first, rest = answers[: MIN_LABELLED // 2], answers[MIN_LABELLED // 2 :]
        _label_all(client, first, truth)

        # Too few labelled shadow scores: the automatic promotion refuses, with the counts.
        refused = shadow.crispml("shadow", "promote")
        assert refused.returncode == 5, refused.stderr
        assert f"{len(first)} labelled shadow scores" in refused.stderr
        assert f"at least {MIN_LABELLED} are needed" in refused.stderr

        _label_all(client, rest, truth)
        labelled_at = time.time()
        # The report needs a window: every score of this test's server is in this one.
        window = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
        report = client.get("/v1/report", params=window)
        assert report.status_code == 200, report.text
    body = report.json()
    compared = body["shadow"]
    assert compared["pairs"] == 5 + len(items)
    assert compared["labelled_pairs"] == len(items)
    assert compared["champion"]["model_version"] == "1"
    assert compared["challenger"]["model_version"] == "2"
    assert compared["positives"] == sum(truth.values()) > 10
    print("shadow report:", compared["reason"])
    assert compared["verdict"] == "passed", compared["reason"]
    assert compared["low"] <= compared["difference"] <= compared["high"]
    assert compared["difference"] == pytest.approx(
        compared["challenger"]["pr_auc"] - compared["champion"]["pr_auc"]
    )
    # Online scores by day: version 1 answered, version 2 in shadow.
    online = {(d["model_version"], d["shadow"]): d for d in body["online"]}
    assert online[("1", False)]["labelled"] == len(items)
    assert online[("2", True)]["labelled"] == len(items)
    assert online[("1", False)]["pr_auc"] == pytest.approx(compared["champion"]["pr_auc"])

    # Labelled-data age: the newest label on a record each role scored, and of the env.
    metrics = _metrics(shadow.server)
    for role, version in (("champion", "1"), ("challenger", "2"), ("environment", "")):
        age = metrics[
            (
                "crispml_labelled_data_age_seconds",
                frozenset({("role", role), ("model_version", version)}),
            )
        ]
        assert 0 <= age < time.time() - labelled_at + 60, (role, age)

    # The CLI reads the same store and registry: the same comparison, number for number.
    cli = shadow.crispml("shadow", "report")
    assert cli.returncode == 0, cli.stderr
    printed = json.loads(cli.stdout)
    for key in ("pairs", "labelled_pairs", "positives", "verdict", "difference", "low", "high"):
        assert printed[key] == compared[key], key
    assert printed["champion_alias"] == ALIAS and printed["challenger_alias"] == CHALLENGER

    promoted = shadow.crispml("shadow", "promote")
    assert promoted.returncode == 0, promoted.stderr
    result = json.loads(promoted.stdout)
    assert (result["mode"], result["from"], result["to"]) == ("automatic", "1", "2")
    client = _mlflow(registry)
    assert str(client.get_model_version_by_alias(registry.model_name, ALIAS).version) == "2"
    from pipeline.registry import alias_holder

    assert alias_holder(client, registry.model_name, CHALLENGER) is None
    event = shadow.history(ALIAS)[-1]
    assert event["reason"].startswith("shadow promote (automatic)")
    assert f"{len(items)} labelled shadow scores" in event["reason"]
    assert shadow.history(CHALLENGER)[-1]["version"] is None
    shadow.wait_for_models("2", None)  # the service follows: version 2 alone


def test_rollback_with_a_challenger_present_and_a_manual_promotion(shadow: Shadow) -> None:
    registry = shadow.registry
    registry.move_alias(CHALLENGER, 1, shadow.store_url)  # the old champion challenges the new
    shadow.wait_for_models("2", "1")
    rolled = shadow.crispml("alias", "rollback", "--reason", "test")
    assert rolled.returncode == 0, rolled.stderr
    assert "version 2 -> version 1" in rolled.stdout
    shadow.wait_for_models("1", "1")
    before = len(shadow.pairs())
    with shadow.server.client() as client:
        answer = client.post("/v1/score", json=sample_records(registry, 1, start=800)[0])
    assert answer.json()["model_version"] == "1"
    time.sleep(0.5)
    assert len(shadow.pairs()) == before  # a challenger equal to the champion: no shadow

    registry.move_alias(CHALLENGER, 2, shadow.store_url)
    refused = shadow.crispml("shadow", "promote", "--manual")
    assert refused.returncode == 3 and "needs --reason" in refused.stderr
    manual = shadow.crispml("shadow", "promote", "--manual", "--reason", "CAB-7 approved")
    assert manual.returncode == 0, manual.stderr
    assert json.loads(manual.stdout)["mode"] == "manual"
    event = shadow.history(ALIAS)[-1]
    assert (event["version"], event["reason"]) == ("2", "shadow promote (manual): CAB-7 approved")
    nothing = shadow.crispml("shadow", "promote")
    assert nothing.returncode == 1 and f"holds @{CHALLENGER}" in nothing.stderr
    shadow.wait_for_models("2", None)
    back = shadow.crispml("alias", "rollback")
    assert back.returncode == 0, back.stderr
    shadow.wait_for_models("1", None)


def _mlflow(registry: Registry) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)


# --------------------------------------------------------------------------- monitoring files

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def _exported_names(server: Server) -> set[str]:
    """Every series name the service's /metrics can carry, from its real exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["_sum", "_count", ""],
            "info": ["_info"],
        }.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, grouping clauses, numbers and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word in PROMQL_WORDS:
            continue  # a function or a keyword
        names.add(word)
    return names


def test_dashboard_and_scrape_config_name_only_exported_metrics(shadow: Shadow) -> None:
    exported = _exported_names(shadow.server)
    assert {
        "crispml_model_age_seconds",
        "crispml_labelled_data_age_seconds",
        "crispml_shadow_failures_total",
        "crispml_http_requests_total",
    } <= exported
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 12
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "request rate",
        "latency",
        "errors",
        "batch size",
        "model age",
        "labelled-data age",
        "disagreement",
        "challenger failures",
    ):
        assert topic in titles, topic
    for expr in exprs:
        names = _metric_names(re.sub(r"label_values\(([^,]+),.*\)", r"\1", expr))
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {names - exported}, not exported"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    assert any("static_configs" in job for job in jobs.values())


def test_the_promql_name_check_can_fail() -> None:
    assert _metric_names('sum by (le) (rate(x_total{a="b(c)"}[5m])) / y') == {"x_total", "y"}
    assert _metric_names("histogram_quantile(0.99, sum by (le) (rate(z_bucket[1m])))") == {
        "z_bucket"
    }
