"""The admin console at /console: a web page for people who run the service.

It shows each environment's serving and challenger versions with their alias history,
recent scores with lineage and label coverage per day, verify results per frame with
links to Evidently's pages, drift and PR-AUC over time, and the service's own traffic;
an admin rolls the service's alias back from it, with a reason.

* `auth`     - login with a bearer token, a signed session cookie, CSRF tokens;
* `queries`  - read-only store queries, and traffic from the service's own metrics;
* `reports`  - reports/verify.json, reports/replay.json and the Evidently pages;
* `serving`  - alias holders, history and the rollback (`pipeline.registry.move_alias`);
* `router`   - the routes; templates/ and static/ hold the pages' HTML, CSS and script.

`add_routes` is called like the API routers' (see `pipeline.service.routers`).
"""

from pipeline.service.console.router import add_routes

__all__ = ["add_routes"]
