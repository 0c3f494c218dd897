"""Online scoring: a FastAPI service whose every answered score is a stored score.

The package is split so that the decisions can be read and tested without a server:

* `config`     - the service's own knobs (batch limits, tokens, reload interval), from env.
* `contract`   - request and response models generated from the data contract, and the
                 model's input frame built from validated records.
* `ids`        - record ids derived from a record's content when it comes without one.
* `batching`   - the asyncio micro-batcher behind both inference and the group commit.
* `model`      - which model serves, how it is loaded, and the immutable holder swapped on reload.
* `errors`     - turning validation errors into messages that name field, rule and value.
* `middleware` - body-size limit and Prometheus request metrics, as plain ASGI.
* `metrics`    - the Prometheus collectors.
* `app`        - the FastAPI application: thin routes over the pieces above.
* `server`     - `crispml serve`: settings, uvicorn, and a process set up for serving.

Nothing heavy is imported here, so `import pipeline.service` stays cheap.
"""
