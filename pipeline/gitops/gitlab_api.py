"""The GitLab API, for the one thing CI posts: the merge request report's note."""

from __future__ import annotations

from pipeline.errors import ServiceUnavailable
from pipeline.gitops.mr_report import REPORT_MARKER

TOKEN_VARIABLE = "CRISPML_GITLAB_TOKEN"


def post_note(
    body: str, server_url: str, token: str, project_id: str, mr_iid: str
) -> tuple[str, int]:
    """Create the report's note on the merge request, or update it where it already is."""
    import gitlab
    import requests

    try:
        gl = gitlab.Gitlab(server_url, private_token=token, timeout=30)
        gl.auth()
        me = getattr(gl.user, "id", None)
        mr = gl.projects.get(project_id, lazy=True).mergerequests.get(mr_iid, lazy=True)
        for note in mr.notes.list(iterator=True):
            if getattr(note, "system", False) or REPORT_MARKER not in (note.body or ""):
                continue
            if me is not None and getattr(note, "author", {}).get("id") != me:
                continue
            note.body = body
            note.save()
            return "updated", int(note.id)
        created = mr.notes.create({"body": body})
        return "created", int(created.id)
    except (gitlab.exceptions.GitlabError, requests.RequestException) as error:
        raise ServiceUnavailable(
            f"could not post the report to merge request !{mr_iid}: {error}"
        ) from None
