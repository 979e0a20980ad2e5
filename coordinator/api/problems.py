"""Errors as `application/problem+json` (RFC 9457), from one table, in one place.

Domain errors map to statuses by type; request validation errors become 422 with the
offending locations (never the offending values: they may be secrets, e.g. a token);
unknown routes and methods keep their 404/405; anything unexpected is a 500 that says
nothing about its cause (the cause is logged).
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConfigurationError,
    CoordinatorError,
    DatabaseNotReady,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    SignatureRejected,
    StateConflict,
)

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:fmtl:problem:"

#: The one mapping from error types to HTTP statuses (the most specific type wins).
STATUS_OF: Final[dict[type[CoordinatorError], int]] = {
    InvalidInput: 422,
    PayloadTooLarge: 413,
    NotFound: 404,
    AlreadyExists: 409,
    StateConflict: 409,
    AuthenticationFailed: 401,
    PermissionDenied: 403,
    DatabaseNotReady: 503,
    ConfigurationError: 500,
    CoordinatorError: 400,
}

_TITLES: Final = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid input",
    500: "Internal server error",
    503: "Service unavailable",
}


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="urn:fmtl:problem:<slug>")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ValidationIssue] | None = None


class ErrorPages(Protocol):
    """Answers errors of some paths with pages instead of problem documents (the console)."""

    def handles(self, request: Request) -> bool: ...

    def page(self, request: Request, status: int, detail: str) -> Response: ...


def _page(request: Request, status: int, detail: str) -> Response | None:
    pages: ErrorPages | None = getattr(request.app.state, "error_pages", None)
    if pages is None or not pages.handles(request):
        return None
    return pages.page(request, status, detail)


def status_of(error: CoordinatorError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


def problem_response(
    status: int,
    slug: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[ValidationIssue] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        type=PROBLEM_TYPE_PREFIX + slug,
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


#: OpenAPI `responses` entries documenting problem documents for the given statuses.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {
        status: {
            "model": Problem,
            "description": _TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for status in statuses
    }


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoordinatorError)
    status = status_of(exc)
    if (page := _page(request, status, exc.detail)) is not None:
        return page
    headers = None
    if status == 401:
        scheme = "Signature" if isinstance(exc, SignatureRejected) else "Bearer"
        headers = {"WWW-Authenticate": scheme}
    if status >= 500:
        logger.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    return problem_response(
        status, exc.slug, exc.detail, instance=request.url.path, headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        ValidationIssue(
            loc=[part for part in error.get("loc", ()) if isinstance(part, str | int)],
            msg=str(error.get("msg", "invalid")),
            type=str(error.get("type", "invalid")),
        )
        for error in exc.errors()
    ]
    where = ", ".join(".".join(str(part) for part in issue.loc) for issue in issues[:5])
    if (page := _page(request, 422, f"the form is incomplete or invalid ({where})")) is not None:
        return page
    return problem_response(
        422,
        "invalid-request",
        f"the request does not match the API schema ({where})",
        instance=request.url.path,
        errors=issues,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "error")
    if (page := _page(request, exc.status_code, detail)) is not None:
        return page
    return problem_response(
        exc.status_code,
        slug,
        detail,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500, "internal", "an internal error occurred; it was logged", instance=request.url.path
    )


def install_problem_handlers(app: FastAPI, pages: ErrorPages | None = None) -> None:
    app.state.error_pages = pages
    app.add_exception_handler(CoordinatorError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
