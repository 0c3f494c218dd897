"""What several routers share: the JSON media-type check and the error answers."""

import email.message
from typing import Any

from fastapi import HTTPException, Request

from pipeline.service.access import Responses
from pipeline.service.contract import FieldError, Problem, ValidationProblem

INVALID: Responses = {
    413: {"model": Problem, "description": "Request body above the size limit."},
    415: {"model": Problem, "description": "The body is not sent as application/json."},
    422: {"model": ValidationProblem, "description": "A field breaks a rule of the contract."},
}


def _is_json(content_type: str | None) -> bool:
    """The media types FastAPI reads as JSON: application/json and application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def require_json(request: Request) -> None:
    """415 for a body not declared as JSON (text/plain, a form, no Content-Type at all).

    FastAPI hands such a body to validation as raw bytes, and the client got a 422 about
    the record's shape for what is a media type mistake. A dependency runs before the
    body's validation errors are raised, so the 415 wins. An empty body keeps the 422
    that says the body is missing.
    """
    if _is_json(request.headers.get("content-type")) or not await request.body():
        return
    raise HTTPException(
        415, "the request body must be JSON: send it with Content-Type: application/json"
    )


def field_error(status: int, field: str, rule: str, msg: str, value: Any = None) -> HTTPException:
    entry = FieldError(loc=[field], field=field, rule=rule, msg=msg, value=value).model_dump()
    return HTTPException(status, detail=[entry])
