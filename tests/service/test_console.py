"""The admin console (/console) through FastAPI's TestClient, against a real registry.

Each test gets its own alias of the session's registry (`model_registry`), moved to
version 1 and then 2 with its history in the test's own store, so a rollback here never
disturbs another test. The app serves the constant model (no model is loaded); the
console reads the registry, the store and the repository's reports/ like in production.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.service.config import ServiceConfig
from pipeline.store import new_score_id, utcnow
from tests.service.conftest import Registry, app_serving_constant, make_repo

ADMIN = "console-admin-token-0123456789abcdef"
READ = "console-read-token-0123456789abcdef"
SCORE = "console-score-token-0123456789abcdef"
FORM = {"content-type": "application/x-www-form-urlencoded"}


class Console:
    """One app with its repository, store, alias and registry."""

    def __init__(self, root: Path, store_url: str, alias: str, registry: Registry) -> None:
        self.root, self.store_url, self.alias, self.registry = root, store_url, alias, registry
        config = ServiceConfig(
            api_token=ADMIN, api_tokens=(("read", READ), ("score", SCORE)), reload_interval=0
        )
        self.app = app_serving_constant(root, config)
        self.state = self.app.state.service

    def client(self) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=True, follow_redirects=False)

    def holder(self) -> str | None:
        from mlflow import MlflowClient

        from pipeline.registry import alias_holder

        client = MlflowClient(self.registry.tracking_uri, self.registry.tracking_uri)
        found = alias_holder(client, self.registry.model_name, self.alias)
        return None if found is None else str(found.version)

    def history(self) -> list[dict[str, Any]]:
        from pipeline.store.aliases import read_history

        return [
            e.as_dict()
            for e in read_history(self.state.store, self.registry.model_name, self.alias) or []
        ]


@pytest.fixture
def console(tmp_path: Path, model_registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Console:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", model_registry.tracking_uri)
    monkeypatch.delenv("CRISPML_STORE_URL", raising=False)
    alias = f"console-{uuid.uuid4().hex[:8]}"
    store_url = f"sqlite:///{tmp_path / 'scores.db'}"
    root = make_repo(tmp_path / "repo", env="dev", store_url=store_url, alias=alias)
    model_registry.move_alias(alias, 1, store_url)
    model_registry.move_alias(alias, 2, store_url)
    return Console(root, store_url, alias, model_registry)


def login(client: TestClient, token: str) -> Any:
    return client.post("/console/login", content=f"token={token}", headers=FORM)


def rollback_form(html: str) -> dict[str, str]:
    """The hidden fields of the page's rollback form, as a browser would send them."""
    form = re.search(r'<form[^>]*id="rollback-form".*?</form>', html, re.S)
    assert form, "the page offers no rollback form"
    return dict(re.findall(r'name="(csrf|expected|target)" value="([^"]*)"', form.group()))


def post_rollback(client: TestClient, fields: dict[str, str], **headers: str) -> Any:
    from urllib.parse import urlencode

    return client.post("/console/rollback", content=urlencode(fields), headers={**FORM, **headers})


# ------------------------------------------------------------------ login, cookie, roles


def test_without_a_session_every_console_page_sends_to_the_login(console: Console) -> None:
    with console.client() as client:
        for path in ("/console", "/console/reports/verify/all_drift.html"):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == "/console/login"
        assert client.get("/console/api/traffic").status_code == 401
        assert post_rollback(client, {"reason": "x"}).headers["location"] == "/console/login"
        page = client.get("/console/login")
        assert page.status_code == 200 and 'type="password"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        # A forged or tampered cookie is no session either.
        client.cookies.set("crispml_console", "e30.AAAA", path="/console")
        assert client.get("/console").status_code == 303


def test_login_trades_a_token_for_an_httponly_strict_cookie(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    with console.client() as client:
        for token in ("not-a-token", SCORE):  # unknown, and a role that may not view
            refused = login(client, token)
            assert refused.status_code == 401, token
            assert "set-cookie" not in refused.headers
            assert token not in refused.text
        answer = login(client, READ)
        assert answer.status_code == 303 and answer.headers["location"] == "/console"
        cookie = answer.headers["set-cookie"]
        assert "crispml_console=" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain http here; https requests get Secure
        assert READ not in cookie
        assert client.get("/console").status_code == 200
        assert client.get("/console/login").headers["location"] == "/console"
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/console").text).group(1)
        out = client.post("/console/logout", content=f"csrf={csrf}", headers=FORM)
        assert out.status_code == 303 and 'crispml_console=""' in out.headers["set-cookie"]
    assert all(t not in caplog.text for t in (ADMIN, READ, SCORE, "not-a-token"))


def test_the_read_role_sees_the_console_but_cannot_roll_back(console: Console) -> None:
    with console.client() as client:
        login(client, READ)
        page = client.get("/console")
        assert page.status_code == 200
        assert re.search(r'id="serving-version">2<', page.text)
        assert f"history-{console.alias}" in page.text
        assert 'id="rollback-form"' not in page.text  # not even shown
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        fields = {"csrf": csrf, "expected": "2", "target": "1", "reason": "try"}
        answer = post_rollback(client, fields)
        assert answer.status_code == 403
        assert "Only an admin" in answer.text
    assert console.holder() == "2"


def test_a_rollback_without_the_csrf_token_or_from_another_site_is_refused(
    console: Console,
) -> None:
    with console.client() as client:
        login(client, ADMIN)
        fields = {**rollback_form(client.get("/console").text), "reason": "INC-1"}
        for bad in (
            {**fields, "csrf": ""},
            {**fields, "csrf": fields["csrf"][:-2] + "xx"},
            {k: v for k, v in fields.items() if k != "csrf"},
        ):
            answer = post_rollback(client, bad)
            assert answer.status_code == 403 and "CSRF" in answer.text
        cross = post_rollback(client, fields, origin="https://evil.example")
        assert cross.status_code == 403
        # Another admin session's CSRF token does not fit this session.
        other = console.client()  # a second browser: no lifespan of its own
        login(other, ADMIN)
        theirs = rollback_form(other.get("/console").text)["csrf"]
        assert post_rollback(client, {**fields, "csrf": theirs}).status_code == 403
    assert console.holder() == "2"
    assert len(console.history()) == 2


def test_an_admin_rolls_back_with_a_reason_and_the_history_records_it(console: Console) -> None:
    with console.client() as client:
        login(client, ADMIN)
        page = client.get("/console").text
        fields = rollback_form(page)
        assert (fields["expected"], fields["target"]) == ("2", "1")
        empty = post_rollback(client, {**fields, "reason": "   "})
        assert empty.status_code == 400 and "reason is required" in empty.text
        assert console.holder() == "2"
        done = post_rollback(client, {**fields, "reason": "INC-42 <b>precision</b>\ndropped"})
        assert done.status_code == 303, done.text
        assert done.headers["location"].startswith("/console?event=3")
        after = client.get(done.headers["location"]).text
    assert console.holder() == "1"
    event = console.history()[-1]
    assert event["version"] == "1" and event["previous"] == "2"
    assert (
        event["reason"] == "rollback: from version 2 to version 1 (INC-42 <b>precision</b> dropped)"
    )
    assert event["actor"] == "console:token-1"
    assert re.search(r'id="serving-version">1<', after)
    assert 'id="notice"' in after
    # Escaped, never markup: the reason is shown as text.
    assert "&lt;b&gt;precision&lt;/b&gt;" in after and "<b>precision</b>" not in after
    # 1 -> 2 -> rollback to 1: version 1 served only before, so nothing further back.
    assert 'id="rollback-form"' not in after and "has served only version 1" in after


def test_a_stale_page_gets_a_conflict_and_changes_nothing(console: Console) -> None:
    with console.client() as client:
        login(client, ADMIN)
        fields = {**rollback_form(client.get("/console").text), "reason": "INC-7"}
        console.registry.move_alias(console.alias, 1, console.store_url)  # someone else moved it
        answer = post_rollback(client, fields)
        assert answer.status_code == 409
        assert "moved since this page was loaded" in answer.text
        assert "Nothing was changed" in answer.text
    assert console.holder() == "1"
    assert [e["reason"] for e in console.history()][-1] == "service test"  # no rollback event


# ------------------------------------------------------------------ report pages


def test_report_links_serve_only_pages_of_reports_verify(console: Console) -> None:
    folder = console.root / "reports" / "verify"
    folder.mkdir(parents=True)
    (folder / "frame_7_drift.html").write_text("<html><script>1</script>drift 7</html>")
    (console.root / "reports" / "secret.html").write_text("secret")
    (console.root / "params-copy.html").write_text("secret")
    (folder / "link.html").symlink_to(console.root / "reports" / "secret.html")
    with console.client() as client:
        login(client, READ)
        page = client.get("/console/reports/verify/frame_7_drift.html")
        assert page.status_code == 200 and "drift 7" in page.text
        assert page.headers["content-security-policy"].startswith("sandbox allow-scripts")
        for name in (
            "..%2Fsecret.html",
            "%2e%2e%2fsecret.html",
            "..%5Csecret.html",
            "link.html",
            "frame_8_drift.html",
            "frame_7_drift.HTML",
            "%2e%2e%2f%2e%2e%2fparams-copy.html",
        ):
            answer = client.get(f"/console/reports/verify/{name}")
            assert answer.status_code == 404, name
            assert "secret" not in answer.text
        assert client.get("/console/reports/verify/../secret.html").status_code == 404
        assert client.get("/console/static/..%2Frouter.py").status_code == 404
        assert client.get("/console/static/console.py").status_code == 404


# ------------------------------------------------------------------ sections


def _write_reports(root: Path) -> None:
    reports = root / "reports"
    (reports / "verify").mkdir(parents=True, exist_ok=True)
    frame = {
        "drift_share": 0.24,
        "drifted": ["Amount", "V1"],
        "labeled_rows": 3000,
        "labelled_positives": 40,
        "pr_auc": 0.61,
        "pr_auc_interval": [0.5, 0.7],
        "recall": 0.55,
        "roc_auc": 0.9,
    }
    verify = {
        "frames": {"7": {**frame, "pr_auc_interval": None}, "8": frame},
        "overall": frame,
        "gate": {"verdict": "passed", "reasons": []},
        "model_name": "crispml-fraud",
        "model_version": "2",
    }
    (reports / "verify.json").write_text(json.dumps(verify))
    for name in ("frame_8_drift.html", "frame_8_quality.html", "all_drift.html"):
        (reports / "verify" / name).write_text("<html>page</html>")
    days = [
        {
            "day": d,
            "drift_share": 0.1 * i,
            "drift_share_static": 0.1 * i,
            "pr_auc_static": 0.8 - i / 10,
            "pr_auc_ct": 0.8,
            "serving_version": "1",
            "gate": {"verdict": "passed"},
        }
        for i, d in enumerate((7, 8, 9))
    ]
    (reports / "replay.json").write_text(json.dumps({"days": days}))


def _score_row(record_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "score_id": new_score_id(),
        "record_id": record_id,
        "frame": None,
        "score": 0.3,
        "decision": 0,
        "threshold": 0.5,
        "model_name": "crispml-fraud",
        "model_version": "2",
        "run_id": "run-abcdef",
        "git_commit": "commit-v2",
        "environment": "dev",
        "channel": "api",
        "source": "console-test",
        "scored_at": utcnow(),
        "shadow": False,
        "shadow_of": None,
        **overrides,
    }


def test_every_section_renders_with_data(console: Console) -> None:
    _write_reports(console.root)
    store = console.state.store
    rows = [_score_row(f"tx-{i}") for i in range(4)]
    store.insert_scores(rows)
    store.upsert_labels(
        [
            {
                "environment": "dev",
                "record_id": f"tx-{i}",
                "label": i % 2,
                "source": "t",
                "labeled_at": utcnow(),
            }
            for i in range(2)
        ]
    )
    with console.client() as client:
        client.post("/v1/score", json={"not": "a record"})  # traffic: one 422
        login(client, ADMIN)
        page = client.get("/console")
        live = client.get("/console/api/traffic").json()
    html = page.text
    assert page.status_code == 200
    for section in ("recent-scores", "coverage", "verify-frames", "chart-drift", "traffic-routes"):
        assert f'id="{section}"' in html, section
    assert rows[0]["score_id"][:12] in html and "run-abcdef"[:8] in html  # lineage
    coverage = re.search(r'<table[^>]*id="coverage".*?</table>', html, re.S).group()
    assert ">4<" in coverage and ">2<" in coverage and "50.0 %" in coverage
    verify = re.search(r'<table[^>]*id="verify-frames".*?</table>', html, re.S).group()
    assert 'href="/console/reports/verify/frame_8_drift.html"' in verify
    assert 'href="/console/reports/verify/frame_8_quality.html"' in verify
    assert 'href="/console/reports/verify/all_drift.html"' in verify
    assert "frame_7_drift.html" not in verify  # its page does not exist
    charts = json.loads(re.search(r'id="chart-data">(.*?)</script>', html, re.S).group(1))
    assert [t["name"] for t in charts["drift"]] == [
        "replay: static model",
        "replay: CT model",
        "verify",
    ]
    assert charts["pr_auc"][-1]["x"] == [7, 8]
    assert "POST /v1/score" in html
    assert 'src="/console/static/plotly.min.js"' in html and "cdn" not in html.lower()
    assert live["summary"]["requests"] >= 1
    assert all(
        not r["route"].split(" ")[1].startswith("/console") for r in live["summary"]["routes"]
    )


def test_every_section_renders_without_data(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    with console.client() as client:
        login(client, READ)
        html = client.get("/console").text
        for missing in (
            "no score of dev is stored",
            "no answered score in the last",
            "<code>reports/verify.json</code> does not exist",
            "neither <code>reports/replay.json</code> nor",
            "no request answered since this process started",
        ):
            assert missing in html, missing
        # A registry that does not answer costs its sections, not the page.
        from pipeline.service.console import serving

        def down(_settings: Any) -> Any:
            raise ConnectionError("registry down")

        monkeypatch.setattr(serving, "registry_client", down)
        page = client.get("/console")
        assert page.status_code == 200
        assert "the registry could not be read (ConnectionError)" in page.text
        assert 'id="recent-scores"' not in page.text


def test_static_files_are_served_from_the_service_and_the_schema_is_unchanged(
    console: Console,
) -> None:
    with console.client() as client:
        plotly = client.get("/console/static/plotly.min.js")
        assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
        assert len(plotly.content) > 1_000_000
        assert client.get("/console/static/console.css").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/console")]


def test_label_coverage_and_recent_scores_are_read_in_either_database(store_url: str) -> None:
    """The console's own SQL, on SQLite and PostgreSQL: days in UTC, shadow rows left out
    of coverage, newest scores first."""
    from datetime import UTC, datetime, timedelta

    from pipeline.service.console.queries import label_coverage, recent_scores
    from pipeline.store import ScoreStore
    from tests.service.conftest import delete_environment, unique_env

    environment = unique_env("console")
    store = ScoreStore(store_url)
    store.migrate()
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    late = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)  # the 29th in UTC, whatever the zone
    rows = [
        _score_row("a", environment=environment, scored_at=now),
        _score_row("b", environment=environment, scored_at=now - timedelta(minutes=1)),
        _score_row("c", environment=environment, scored_at=late, channel="batch", frame=7),
        _score_row("a", environment=environment, scored_at=now, shadow=True),
        _score_row("old", environment=environment, scored_at=now - timedelta(days=40)),
    ]
    try:
        store.insert_scores(rows)
        store.upsert_labels(
            [
                {
                    "environment": environment,
                    "record_id": r,
                    "label": label,
                    "source": "t",
                    "labeled_at": now,
                }
                for r, label in (("a", 1), ("c", 0))
            ]
        )
        coverage = label_coverage(store, environment, now=now)
        recent = recent_scores(store, environment)
    finally:
        delete_environment(store_url, environment)
        store.dispose()
    assert coverage == [
        {
            "day": "2026-11-30",
            "channel": "api",
            "scores": 2,
            "labelled": 1,
            "positives": 1,
            "coverage": 0.5,
        },
        {
            "day": "2026-11-29",
            "channel": "batch",
            "scores": 1,
            "labelled": 1,
            "positives": 0,
            "coverage": 1.0,
        },
    ]
    assert [row["record_id"] for row in recent] == ["a", "a", "b", "c", "old"]
    assert [row["shadow"] for row in recent][:2] in ([False, True], [True, False])
    assert recent[0]["scored_at"] == now and recent[-1]["record_id"] == "old"
    assert {row["label"] for row in recent if row["record_id"] == "a"} == {1}
