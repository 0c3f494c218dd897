"""Hostile input, as an attack run sent it: each must be a clean 4xx that costs nobody else.

The app runs in process (FastAPI's TestClient, with its lifespan) on the repository's
own contract, with a stand-in model set directly (no registry): what is under test is
validation, error rendering and the write path, not the model. Raw JSON bytes are sent
where a lone surrogate ("\\ud800") must reach the server as such.

The last test runs attacker and honest clients side by side against PostgreSQL (skipped,
saying so, without CRISPML_TEST_DATABASE_URL): a row the database refuses must fail its
own request only, never the other requests of its group commit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.config import Contract
from pipeline.service import errors as service_errors
from pipeline.service.config import ServiceConfig
from pipeline.service.contract import record_schema
from pipeline.service.errors import clean_value, field_errors, summary
from pipeline.service.scoring import ShadowNotStored
from pipeline.store import ScoreStore, new_score_id, utcnow

from .conftest import (
    TOKEN,
    _postgres_url,
    app_serving_constant,
    delete_environment,
    make_repo,
    unique_env,
)
from .general_case import FEATURES, INPUTS, RECORD, TARGET

ENV = "svchostile"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Characters no id may hold, one of each kind: NUL, ESC, DEL, a C1 control, tab, newline.
CONTROLS = ["\x00", "\x1b", "\x7f", "\x85", "\t", "\n"]


def _service(root: Path, **config: Any) -> FastAPI:
    """The app of `root`, serving a constant model (its store migrated, nothing else loaded)."""
    return app_serving_constant(root, ServiceConfig(api_token=TOKEN, reload_interval=0, **config))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    folder = tmp_path_factory.mktemp("hostile")
    root = make_repo(folder / "repo", env=ENV, store_url=f"sqlite:///{folder / 'scores.db'}")
    app = _service(root)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app.state.service


@pytest.fixture
def client(service) -> TestClient:
    return service[0]


@pytest.fixture
def record(service) -> dict[str, Any]:
    return dict(service[1].schema.example)


def _count(service) -> int:
    return service[1].store.count_scores()


def _raw(client: TestClient, path: str, text: str, **headers: str) -> Any:
    """POST `text` as it is: json.dumps would escape a surrogate, not send one."""
    return client.post(
        path,
        content=text.encode("utf-8"),
        headers={"content-type": "application/json", **headers},
    )


def _problems(answer: Any) -> list[tuple[str, str]]:
    return [(entry["field"], entry["rule"]) for entry in answer.json()["detail"]]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _safe(answer: Any) -> None:
    """No string of the answer, once decoded, holds a control character or a surrogate."""
    assert answer.status_code < 500, answer.text
    answer.content.decode("utf-8")  # strict: a surrogate would not have been encoded
    for text in _strings(answer.json()):
        assert not any(char in text for char in [*CONTROLS, "\ud800", "\udfff"]), text


# ------------------------------------------------------------------ 1. control characters


@pytest.mark.parametrize("char", CONTROLS)
def test_a_control_character_in_an_id_is_422_naming_field_and_rule(
    service, client: TestClient, record: dict[str, Any], char: str
) -> None:
    before = _count(service)
    answer = client.post("/v1/score", json={**record, "transaction_id": f"tx{char}1"})
    assert answer.status_code == 422, answer.text
    assert _problems(answer) == [("transaction_id", "control_character")]
    entry = answer.json()["detail"][0]
    assert f"U+{ord(char):04X}" in entry["msg"]
    assert entry["value"] == f"tx\\u{ord(char):04x}1"  # an escape, never the character
    _safe(answer)
    assert _count(service) == before


def test_control_characters_in_label_ids_source_and_path_are_422(client: TestClient) -> None:
    for item, source, field in [
        ({"score_id": "s\x00", "label": 1}, "api", "labels[0].score_id"),
        ({"record_id": "r\x00", "label": 1}, "api", "labels[0].record_id"),
        ({"record_id": "r", "label": 1}, "ops\x1b[2J", "source"),
    ]:
        answer = client.post("/v1/labels", json={"labels": [item], "source": source}, headers=AUTH)
        assert answer.status_code == 422, answer.text
        assert _problems(answer) == [(field, "control_character")]
        _safe(answer)
    answer = client.get("/v1/scores/s%00x")
    assert answer.status_code == 422, answer.text
    assert _problems(answer) == [("score_id", "control_character")]
    _safe(answer)


def test_free_text_refuses_controls_but_keeps_ordinary_whitespace() -> None:
    """A category is free text: a tab or a line break may be in it, NUL or ESC may not."""
    contract = Contract.model_validate({"columns": [*FEATURES, TARGET]})
    model = record_schema(contract, INPUTS).model
    for kept in ("two\nlines", "a\tb", "x\r\ny"):
        assert model.model_validate({**RECORD, "employer": kept}).model_dump()
    for char in ("\x00", "\x1b", "\x7f", "\x9f"):
        with pytest.raises(Exception) as caught:
            model.model_validate({**RECORD, "employer": f"acme{char}"})
        entries = field_errors(caught.value.errors())  # type: ignore[attr-defined]
        assert [(e["field"], e["rule"]) for e in entries] == [("employer", "control_character")]


# ------------------------------------------------------------------ 2. lone surrogates


def test_a_lone_surrogate_is_422_and_never_echoed(
    service, client: TestClient, record: dict[str, Any]
) -> None:
    before = _count(service)
    body = json.dumps({**record, "transaction_id": "PLACEHOLDER"})
    for text in (
        body.replace("PLACEHOLDER", "tx\\ud800"),  # a valid-looking id
        body.replace('"transaction_id"', '"\\udfff"'),  # an unknown field's name
        "[" + body.replace("PLACEHOLDER", "a") + "," + body.replace("PLACEHOLDER", "\\ud83d") + "]",
    ):
        answer = _raw(client, "/v1/score", text)
        assert answer.status_code == 422, answer.text
        _safe(answer)
        assert "\\ud8" in answer.json()["error"] or "\\udf" in answer.json()["error"]
    labels = '{"labels": [{"record_id": "\\ud800", "label": 1}], "source": "\\udc00"}'
    answer = _raw(client, "/v1/labels", labels, **AUTH)
    assert answer.status_code == 422, answer.text
    assert {rule for _field, rule in _problems(answer)} == {"string_unicode"}
    _safe(answer)
    assert _count(service) == before


def test_error_entries_are_always_encodable() -> None:
    raw = [
        {"loc": ("body", "record", "\ud800\x00"), "type": "extra_forbidden", "msg": "x\ud800"},
        {"loc": ("body", "batch", 0, "V1"), "type": "t", "msg": "m", "input": "\udc00\u202e"},
    ]
    entries = field_errors(raw)
    json.dumps(entries, ensure_ascii=False).encode("utf-8")  # would raise on a surrogate
    summary(entries).encode("utf-8")
    assert entries[0]["field"] == "\\ud800\\u0000" and entries[1]["value"] == "\\udc00\\u202e"
    assert clean_value("a\x00" * 300).startswith("a\\u0000a")


def test_the_422_handler_never_answers_500(
    client: TestClient, record: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should an entry ever be unrenderable, the client still gets a 422, without it."""
    monkeypatch.setattr(
        service_errors, "field_errors", lambda _errors: [{"field": "\ud800", "value": "\ud800"}]
    )
    answer = client.post("/v1/score", json={**record, "V1": "not a number"})
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"error": "invalid request", "detail": []}


# ------------------------------------------------------------------ 3. blank ids


@pytest.mark.parametrize("blank", ["", " ", "   ", "\u3000", "\u00a0\u2003"])
def test_an_empty_or_whitespace_id_is_422(
    service, client: TestClient, record: dict[str, Any], blank: str
) -> None:
    before = _count(service)
    answer = client.post("/v1/score", json={**record, "transaction_id": blank})
    assert answer.status_code == 422, answer.text
    assert _problems(answer) in (
        [("transaction_id", "blank")],
        [("transaction_id", "string_too_short")],
    )
    for item in ({"record_id": blank, "label": 1}, {"score_id": blank, "label": 1}):
        labelled = client.post("/v1/labels", json={"labels": [item]}, headers=AUTH)
        assert labelled.status_code == 422, labelled.text
    assert _count(service) == before


# ------------------------------------------------------------------ 4. duplicate ids


def test_a_batch_repeating_an_id_is_422_naming_the_repeats(
    service, client: TestClient, record: dict[str, Any]
) -> None:
    before = _count(service)
    batch = [
        {**record, "transaction_id": "dup-a"},
        {**record, "transaction_id": "dup-b"},
        {**record, "transaction_id": "dup-a"},
        {**record, "transaction_id": "dup-b"},
    ]
    answer = client.post("/v1/score", json=batch)
    assert answer.status_code == 422, answer.text
    assert _problems(answer) == [
        ("[2].transaction_id", "duplicate_id"),
        ("[3].transaction_id", "duplicate_id"),
    ]
    detail = answer.json()["detail"]
    assert [entry["value"] for entry in detail] == ["dup-a", "dup-b"]
    assert "record [0]" in detail[0]["msg"] and "record [1]" in detail[1]["msg"]
    assert "dup-a" in answer.json()["error"]
    assert _count(service) == before
    # An id sent that equals the id derived for another record is the same clash.
    anonymous = {k: v for k, v in record.items() if k != "transaction_id"}
    derived = client.post("/v1/score", json=anonymous).json()["record_id"]
    clash = client.post("/v1/score", json=[anonymous, {**record, "transaction_id": derived}])
    assert clash.status_code == 422 and _problems(clash) == [("[1].transaction_id", "duplicate_id")]
    distinct = client.post("/v1/score", json=batch[:2])
    assert distinct.status_code == 200, distinct.text


# ------------------------------------------------------------------ 5. media type


def test_a_body_that_is_not_json_is_415(client: TestClient, record: dict[str, Any]) -> None:
    text = json.dumps(record)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        answer = client.post("/v1/score", content=text, headers={"content-type": content_type})
        assert answer.status_code == 415, (content_type, answer.text)
        assert "application/json" in answer.json()["detail"]
    bare = client.post("/v1/score", content=text.encode())  # no Content-Type at all
    assert bare.status_code == 415, bare.text
    labels = json.dumps({"labels": [{"record_id": "r", "label": 1}]})
    plain = {"content-type": "text/plain"}
    assert client.post("/v1/labels", content=labels, headers={**plain, **AUTH}).status_code == 415
    assert client.post("/v1/labels", content=labels, headers=plain).status_code == 401
    # JSON with a charset or a +json type is JSON; an empty body is still a missing body.
    for content_type in ("application/json; charset=utf-8", "application/vnd.crisp+json"):
        answer = client.post("/v1/score", content=text, headers={"content-type": content_type})
        assert answer.status_code == 200, (content_type, answer.text)
    assert client.post("/v1/score", content=b"").status_code == 422
    documented = client.get("/openapi.json").json()["paths"]
    assert "415" in documented["/v1/score"]["post"]["responses"]
    assert "415" in documented["/v1/labels"]["post"]["responses"]


# ------------------------------------------------------------------ 6. other environments


def test_a_score_of_another_environment_is_404(service, client: TestClient) -> None:
    state = service[1]
    rows = [_row(environment, f"env-{environment}") for environment in (ENV, "prod")]
    state.store.insert_scores(rows)
    own, foreign = (row["score_id"] for row in rows)
    assert client.get(f"/v1/scores/{own}").json()["environment"] == ENV
    answer = client.get(f"/v1/scores/{foreign}")
    assert answer.status_code == 404, answer.text
    # The same answer as for an id nobody holds: not even its existence is told.
    missing = client.get("/v1/scores/nobody-holds-this")
    assert answer.json()["detail"] == f"no stored score has id {foreign!r}"
    assert missing.json()["detail"] == "no stored score has id 'nobody-holds-this'"
    assert "prod" not in answer.text


# ------------------------------------------------------------------ 7. group commits


def _row(environment: str, record_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "score_id": new_score_id(),
        "record_id": record_id,
        "frame": None,
        "score": 0.3,
        "decision": 0,
        "threshold": 0.5,
        "model_name": "fraud",
        "model_version": "1",
        "run_id": "r",
        "git_commit": "c",
        "environment": environment,
        "channel": "api",
        "source": "test",
        "scored_at": utcnow(),
        "shadow": False,
        "shadow_of": None,
        **overrides,
    }


def test_a_failed_group_commit_is_retried_request_by_request(service) -> None:
    """One refused row (score is NOT NULL) fails its request; its neighbours are stored."""
    state = service[1]
    good, bad, other = (
        [_row(ENV, "gc-1"), _row(ENV, "gc-2")],
        [_row(ENV, "gc-x", score=None)],
        [_row(ENV, "gc-3")],
    )
    results = state.scoring._commit([good, bad, other])
    assert results[0] == 2 and results[2] == 1, results
    assert isinstance(results[1], sa.exc.IntegrityError)
    for row in (*good, *other):
        assert state.store.get_score(row["score_id"]) is not None
    assert state.store.get_score(bad[0]["score_id"]) is None


def test_a_store_that_is_down_is_not_retried_once_per_request(
    service, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = service[1]
    calls: list[int] = []

    def down(rows: Any, connection: Any = None) -> int:
        calls.append(len(rows))
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(state.store, "insert_scores", down)
    batches = [[_row(ENV, f"down-{i}")] for i in range(5)]
    shadow = [_row(ENV, "down-s", shadow=True)]
    results = state.scoring._commit([*batches, shadow])
    assert all(isinstance(r, sa.exc.OperationalError) for r in results[:5])
    assert isinstance(results[5], ShadowNotStored)
    assert calls == [6, 1], "the shared commit and one retry, not one retry per request"


@pytest.mark.postgres
def test_an_attacker_costs_honest_clients_nothing_in_shared_commits(tmp_path: Path) -> None:
    """Attacker and honest clients in threads, their requests in the same group commits.

    Validation now refuses what PostgreSQL would, so the attacker's bad rows are made
    behind validation: the service's id mapping (`state.scoring.pseudonymise`, the step between
    the validated id and the stored one) puts a NUL into the stored id of every record
    whose id starts with "attack". Those rows really reach PostgreSQL inside the shared
    transaction, which really refuses them.
    """
    url = _postgres_url()
    environment = unique_env("hostile")
    root = make_repo(tmp_path / "repo", env=environment, store_url=url)
    app = _service(root, commit_wait_ms=20.0)
    state = app.state.service
    state.scoring.pseudonymise = lambda ids: [
        f"\x00{i}" if i.startswith("attack") else i for i in ids
    ]
    commits: list[tuple[bool, bool, bool]] = []  # (attacker rows, honest rows, succeeded)
    real_insert = state.store.insert_scores

    def recorded(rows: Any, connection: Any = None) -> int:
        attacked = any(row["record_id"].startswith("\x00") for row in rows)
        honest = any(not row["record_id"].startswith("\x00") for row in rows)
        try:
            added = real_insert(rows, connection)
        except Exception:
            commits.append((attacked, honest, False))
            raise
        commits.append((attacked, honest, True))
        return added

    state.store.insert_scores = recorded
    record = dict(state.schema.example)
    honest_clients, per_client = 4, 12
    statuses: dict[str, list[int]] = {"attacker": [], **{f"h{i}": [] for i in range(4)}}
    start = threading.Barrier(honest_clients + 1)

    def send(name: str, http: TestClient) -> None:
        start.wait()
        for n in range(per_client):
            prefix = "attack" if name == "attacker" else "honest"
            batch = [{**record, "transaction_id": f"{prefix}-{name}-{n}-{k}"} for k in range(2)]
            statuses[name].append(http.post("/v1/score", json=batch).status_code)

    try:
        with TestClient(app, raise_server_exceptions=False) as http:
            threads = [threading.Thread(target=send, args=(n, http)) for n in statuses]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        honest = [s for name, got in statuses.items() if name != "attacker" for s in got]
        assert len(honest) == honest_clients * per_client
        collateral = [s for s in honest if s != 200]
        assert collateral == [], f"{len(collateral)} honest requests failed: {collateral}"
        assert statuses["attacker"] == [503] * per_client
        # The test did exercise shared commits: some failed with honest rows in them.
        assert (True, True, False) in commits, commits
        store = ScoreStore(url)
        try:
            assert store.count_scores(environment=environment) == 2 * len(honest)
        finally:
            store.dispose()
    finally:
        delete_environment(url, environment)
