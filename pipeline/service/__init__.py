"""Online scoring: a FastAPI service whose every answered score is a stored score.

The package is split so that the decisions can be read and tested without a server:

* `config`     - the service's own knobs (batch limits, tokens, rate limit), from env.
* `contract`   - request and response models generated from the data contract, and the
                 model's input frame built from validated records.
* `ids`        - record ids derived from a record's content when it comes without one.
* `batching`   - the asyncio micro-batcher behind both inference and the group commit.
* `model`      - which model serves, how it is loaded, and the immutable holder swapped on reload.
* `scoring`    - `ScoringService`: validate, score, store (and shadow), without HTTP.
* `state`      - `ServiceState`: what one running service holds, its start-up and shutdown.
* `report`     - the realised-quality report of GET /v1/report.
* `access`     - bearer tokens per role and the per-client rate limit, as dependencies.
* `ratelimit`  - the moving-window request counter behind CRISPML_RATE_LIMIT.
* `errors`     - turning validation errors into messages that name field, rule and value.
* `middleware` - body-size limit and Prometheus request metrics, as plain ASGI.
* `metrics`    - the Prometheus collectors.
* `routers`    - the endpoints, one module per concern (scoring, labels, audit, admin, probes).
* `app`        - `create_app`: the FastAPI application assembled from the pieces above.
* `server`     - `crispml serve`: settings, uvicorn, and a process set up for serving.

Nothing heavy is imported here, so `import pipeline.service` stays cheap.
"""
