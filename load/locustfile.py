"""The load scenario of the scoring service: what its clients do, in their proportions.

Each simulated client scores records one at a time most of the time and sometimes
as a batch, sends ground truth for scores it was answered (by score id), and reads
some of its scores back. Weights per task are in `ScoringClient`; think time between
two tasks of one client is 50-250 ms, so the offered load grows with the user count
instead of every user hammering as fast as the server answers.

Run it through `python load/run.py` (it starts the service, picks the numbers from
params.yaml's `load:` block and checks the result). Locust on its own works too, but
only against this machine: any other host is refused before the first request.

    locust -f load/locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:8000

Environment: CRISPML_LOAD_RECORDS, a JSON file of records to score (a list of
objects, as POST /v1/score takes them); CRISPML_LOAD_TOKEN, a bearer token with the
label role (labels need one); CRISPML_LOAD_BATCH, records per batch request (10).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import sys
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from locust import FastHttpUser, between, events, task

RECORDS_ENV = "CRISPML_LOAD_RECORDS"
TOKEN_ENV = "CRISPML_LOAD_TOKEN"
BATCH_ENV = "CRISPML_LOAD_BATCH"
LOOPBACK_NAMES = {"localhost"}


def is_loopback(url: str | None) -> bool:
    """Only an address of this machine may be loaded: 127.0.0.0/8, ::1 or localhost."""
    host = urlsplit(url or "").hostname
    if host is None:
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@events.init.add_listener
def _refuse_other_hosts(environment: Any, **_kwargs: Any) -> None:
    """Before any user starts; each user checks its host again (`on_start`), for a host
    typed into the web UI later."""
    if not is_loopback(environment.host):
        sys.stderr.write(f"refusing to load {environment.host!r}: only 127.0.0.1, ::1, localhost\n")
        sys.exit(2)


def _records() -> list[dict[str, Any]]:
    path = os.environ.get(RECORDS_ENV)
    if not path:
        raise SystemExit(f"{RECORDS_ENV} must name a JSON file of records to score")
    with open(path, encoding="utf-8") as handle:
        records = json.load(handle)
    if not records:
        raise SystemExit(f"{path} holds no records")
    return records


RECORDS: list[dict[str, Any]] = []


class ScoringClient(FastHttpUser):
    """One client of the service. Task weights: 10 single scores, 2 batches, 2 label
    uploads, 3 reads, so about 60 % of requests are scores and every batch is 10 rows."""

    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        if not is_loopback(self.host):
            raise SystemExit(f"refusing to load {self.host!r}: only this machine")
        if not RECORDS:
            RECORDS.extend(_records())
        self.batch = int(os.environ.get(BATCH_ENV, "10"))
        token = os.environ.get(TOKEN_ENV)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        # Score ids this client was answered: what it labels and reads back.
        self.answered: deque[str] = deque(maxlen=200)
        self.unlabelled: deque[str] = deque(maxlen=200)

    def _answer(self, response: Any, expected: int = 200) -> Any:
        if response.status_code != expected:
            response.failure(f"status {response.status_code}")
            return None
        return response.json()

    def _remember(self, results: list[dict[str, Any]]) -> None:
        for result in results:
            self.answered.append(result["score_id"])
            self.unlabelled.append(result["score_id"])

    @task(10)
    def score_one(self) -> None:
        record = random.choice(RECORDS)
        with self.client.post(
            "/v1/score", json=record, name="POST /v1/score (1 record)", catch_response=True
        ) as response:
            body = self._answer(response)
            if body is not None:
                self._remember([body])

    @task(2)
    def score_batch(self) -> None:
        records = random.sample(RECORDS, min(self.batch, len(RECORDS)))
        with self.client.post(
            "/v1/score",
            json=records,
            name=f"POST /v1/score ({len(records)} records)",
            catch_response=True,
        ) as response:
            body = self._answer(response)
            if body is not None:
                self._remember(body)

    @task(2)
    def upload_labels(self) -> None:
        if not self.unlabelled:
            self.score_one()
            return
        count = min(len(self.unlabelled), 5)
        labels = [
            {"score_id": self.unlabelled.popleft(), "label": int(random.random() < 0.05)}
            for _ in range(count)
        ]
        with self.client.post(
            "/v1/labels",
            json={"labels": labels},
            headers=self.auth,
            name="POST /v1/labels",
            catch_response=True,
        ) as response:
            self._answer(response)

    @task(3)
    def read_score(self) -> None:
        if not self.answered:
            self.score_one()
            return
        score_id = random.choice(self.answered)
        with self.client.get(
            f"/v1/scores/{score_id}",
            headers=self.auth,
            name="GET /v1/scores/{score_id}",
            catch_response=True,
        ) as response:
            self._answer(response)
