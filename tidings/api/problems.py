"""Errors as RFC 9457 problem details (`application/problem+json`).

Every refusal says what to fix: a title, a detail, and where it can, the
fields at fault (`errors: [{"field": "events.3.payload", "message": ...}]`).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tidings.api")

PROBLEM_JSON = "application/problem+json"


class FieldProblem(BaseModel):
    field: str
    message: str


class ProblemBody(BaseModel):
    """What every error answer carries."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] = Field(default_factory=list)


class Problem(Exception):
    """An answer other than success: raised by a route, rendered by the handler below."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors or []
        self.headers = headers or {}


_DESCRIBED = {
    400: "Malformed JSON, invalid UTF-8, a missing Idempotency-Key or a bad cursor",
    401: "No API key, or an unknown or revoked one",
    403: "The key lacks the scope, or names another instance",
    413: "The body is over api.max_body, or the batch over api.max_batch",
    415: "The body is not JSON",
    422: "A field at fault (named in errors)",
}


def problem_responses(*extra: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route for its OpenAPI: problem+json with ProblemBody."""
    described = {**_DESCRIBED, **dict(extra)}
    return {
        status: {
            "model": ProblemBody,
            "description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemBody"}}},
        }
        for status, description in sorted(described.items())
    }


def problems_only_as_problem_json(document: dict[str, Any]) -> dict[str, Any]:
    """Error answers are problem+json only (FastAPI also lists a model as application/json)."""
    for path in document.get("paths", {}).values():
        for operation in path.values():
            for status, answer in operation.get("responses", {}).items():
                if status[:1] in ("4", "5") and PROBLEM_JSON in answer.get("content", {}):
                    answer["content"].pop("application/json", None)
    return document


def problem_response(problem: Problem) -> JSONResponse:
    body = ProblemBody(
        title=problem.title, status=problem.status, detail=problem.detail, errors=problem.errors
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic location as a dotted path, without FastAPI's leading 'body'/'query'."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
    return ".".join(parts)


def validation_problem(errors: list[dict[str, Any]], *, what: str = "request body") -> Problem:
    """422 naming each field at fault; malformed JSON is a 400 saying where it broke."""
    for error in errors:
        if error.get("type") == "json_invalid":
            where = error.get("loc", ())
            at = f" at character {where[-1]}" if where and isinstance(where[-1], int) else ""
            reason = (error.get("ctx") or {}).get("error", "syntax error")
            return Problem(
                400, f"the {what} is not valid JSON{at}: {reason}", title="Malformed JSON"
            )
    found = [
        FieldProblem(
            field=field_of(error.get("loc", ())) or what,
            message=str(error.get("msg", "invalid")).removeprefix("Value error, "),
        )
        for error in errors[:50]
    ]
    summary = "; ".join(f"{p.field}: {p.message}" for p in found[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return Problem(422, f"the {what} is invalid: {summary}{more}", errors=found)


def install_problem_handlers(app: FastAPI, *, endpoints: str) -> None:
    """Problem answers for every error; `endpoints` tells a 404 what there is instead."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        located = [e for e in exc.errors() if e.get("loc")]
        what = "query" if located and located[0]["loc"][0] == "query" else "request body"
        return problem_response(validation_problem(list(exc.errors()), what=what))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.url.path}; {endpoints}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; {endpoints}"
        return problem_response(Problem(exc.status_code, detail, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception(
            "the API failed on %s %s; the request stored nothing unless its answer said so",
            request.method,
            request.url.path,
        )
        return problem_response(
            Problem(
                500, "an internal error; the server log has the details", title="Internal error"
            )
        )
