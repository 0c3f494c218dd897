"""The service's endpoints, one module per concern, each adding its routes to a router.

* `scoring` - POST /v1/score: HTTP around `ScoringService` (pipeline.service.scoring).
* `labels`  - POST /v1/labels: ground truth for stored scores.
* `audit`   - GET /v1/scores/{score_id} and GET /v1/report: reading back what was stored.
* `admin`   - POST /v1/admin/reload.
* `probes`  - /healthz, /readyz and /metrics: no token and no rate limit, ever (they take
              no `Access` at all).
* `common`  - what several of them share: the JSON media-type check, error answers.

Each module's `add_routes(routes, state, ...)` adds its endpoints to the APIRouter it is
given, and `create_app` gives them the app's own router instead of including a router per
module. Since FastAPI 0.165, `include_router` no longer copies routes into the app: it
nests the included router, which costs a match per included router on every request
(measured: 13 us more per /healthz call, the last of five) and leaves `app.routes` without
the endpoints' paths. Adding the routes to the app's router keeps the app exactly as one
declared in a single module.

Routes are added per app rather than declared at import: request bodies are generated
from the data contract, and guards from the configured tokens. For the same reason no
module here uses `from __future__ import annotations`: FastAPI must see the real types of
the route parameters, and some of them are built at run time.
"""
