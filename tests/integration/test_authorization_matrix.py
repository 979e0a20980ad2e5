"""Every endpoint x every kind of caller, against the live coordinator: only what an endpoint
declares gets through.

The endpoints come from the application itself (`coordinator.api.deps.endpoints`, which
reads the access each route declares), checked against the served OpenAPI document, so a
new endpoint is in this matrix the moment it exists. Callers: nobody, a garbage token, each
role, a revoked and an expired admin token, a correctly signed agent, an agent signature that
is too old, a replayed agent request, and a revoked institution's signature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import httpx
import sqlalchemy as sa

from agent.http_signing import RequestSigner
from coordinator.api.deps import AccessKind, Endpoint, endpoints
from coordinator.app import create_app
from coordinator.audit.service import Actor, ActorKind
from coordinator.auth import service as tokens
from coordinator.auth.models import ApiToken, Role
from coordinator.db import Database, utcnow

from .conftest import AgentIdentity, CoordinatorServer, enroll_over_http

ADMIN_ONLY_SIDE_EFFECT_FREE = "spare"  # an institution the matrix may revoke
CONSOLE = "/console"


@dataclass(frozen=True)
class Caller:
    name: str
    #: Builds the request headers for (method, absolute url, body).
    headers: Callable[[str, str, bytes], dict[str, str]]
    role: Role | None = None  # the role of a valid bearer token
    agent: bool = False  # a valid, fresh agent signature


def _bearer(token: str) -> Callable[[str, str, bytes], dict[str, str]]:
    return lambda method, url, body: {"Authorization": f"Bearer {token}"}


def _signed(
    signer: RequestSigner, *, age_s: int = 0
) -> Callable[[str, str, bytes], dict[str, str]]:
    def headers(method: str, url: str, body: bytes) -> dict[str, str]:
        created = utcnow() - timedelta(seconds=age_s) if age_s else None
        return signer.signature_headers(method, url, body, created=created)

    return headers


def _replayed(signer: RequestSigner) -> Callable[[str, str, bytes], dict[str, str]]:
    def headers(method: str, url: str, body: bytes) -> dict[str, str]:
        signed = signer.signature_headers(method, url, body)
        httpx.request(method, url, content=body, headers=signed, timeout=10)  # first use
        return signed  # the replay

    return headers


def _token_in_db(server: CoordinatorServer, role: Role, *, expired: bool) -> str:
    settings = server.env.settings()
    database = Database(settings.resolved_database_url)
    with database.scope() as session:
        issued = tokens.create_token(
            session,
            settings.pepper,
            name=f"matrix-{role.value}",
            role=role,
            expires_at=utcnow() + timedelta(days=1),
            actor=Actor(ActorKind.CLI, "matrix"),
        )
        if expired:
            session.execute(
                sa.update(ApiToken)
                .where(ApiToken.id == issued.record.id)
                .values(expires_at=utcnow() - timedelta(minutes=1))
            )
            session.commit()
    database.dispose()
    return issued.secret


def _issue(server: CoordinatorServer, admin: str, role: Role) -> tuple[int, str]:
    made = httpx.post(
        f"{server.url}/api/v1/tokens",
        json={"name": f"matrix {role.value}", "role": role.value},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    return int(made.json()["id"]), str(made.json()["token"])


def _body(endpoint: Endpoint, counter: int) -> bytes:
    """A well-formed body for each POST, so that only authorization can refuse the request."""
    path = endpoint.path
    if path == "/api/v1/tokens":
        document: object = {"name": f"m{counter}", "role": "auditor"}
    elif path == "/api/v1/federations":
        document = {
            "name": f"matrix_{counter}",
            "tasks": [{"name": "t", "kind": "binary"}],
            "model": {"encoder": {"kind": "mlp", "input_dim": 3}},
        }
    elif path.endswith("/institutions"):
        document = {"name": f"matrix_{counter}", "tasks": ["disease"]}
    elif path.endswith("/invitation"):
        document = {}
    elif path.endswith("/decline"):
        document = {"reason": "budget"}
    elif path.endswith("/report"):
        document = {"tasks": {}}
    elif path.endswith("/keys") or path.endswith("/shares"):
        document = {"advert": "AA"} if path.endswith("/keys") else {"message": "AA"}
    elif path.endswith("/consistency"):
        document = {"signature": "AA"}
    elif path.endswith("/unmask"):
        document = {"response": "AA"}
    elif path.endswith("/enroll"):
        document = {"token": "fmtl_enroll_" + "x" * 43, "public_key": "A" * 43, "proof": "A" * 86}
    else:
        return b""
    return json.dumps(document).encode()


def _console(endpoint: Endpoint) -> bool:
    return endpoint.path == CONSOLE or endpoint.path.startswith(CONSOLE + "/")


def _url(server: CoordinatorServer, endpoint: Endpoint, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return server.url + re.sub(r"\{(\w+)\}", fill, endpoint.path)


def _admitted(endpoint: Endpoint, caller: Caller) -> bool:
    access = endpoint.access
    if access.kind is AccessKind.PUBLIC:
        return True
    if access.kind is AccessKind.PEOPLE:
        return caller.role is not None and caller.role in access.roles
    if access.kind is AccessKind.AGENT:
        return caller.agent
    return False  # enrollment with a bogus one-time token: nobody


def test_only_the_declared_callers_get_through(
    coordinator_server: CoordinatorServer,
    admin_token: str,
    federation_name: str,
    agent_identity: AgentIdentity,
) -> None:
    server = coordinator_server
    app_endpoints = endpoints(create_app(server.env.settings(), start_embedded_worker=False))
    served = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    served_operations = {(method.upper(), path) for path, item in served.items() for method in item}
    app_endpoints = [e for e in app_endpoints if not _console(e)]  # console: its own test
    assert {(e.method, e.path) for e in app_endpoints} == served_operations

    revoked_agent = enroll_over_http(
        server.url, admin_token, federation_name, "revoked", ["disease"]
    )
    revoked = httpx.post(
        f"{server.url}/api/v1/federations/{federation_name}/institutions/revoked/revoke",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert revoked.status_code == 200
    spare_invited = httpx.post(
        f"{server.url}/api/v1/federations/{federation_name}/institutions",
        json={"name": ADMIN_ONLY_SIDE_EFFECT_FREE, "tasks": ["disease"]},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert spare_invited.status_code == 201
    spare_token_id, _ = _issue(server, admin_token, Role.AUDITOR)
    revoked_token_id, revoked_token = _issue(server, admin_token, Role.ADMIN)
    assert httpx.post(
        f"{server.url}/api/v1/tokens/{revoked_token_id}/revoke",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    ).is_success

    callers = [
        Caller("nobody", lambda m, u, b: {}),
        Caller("garbage bearer", _bearer("fmtl_api_not-a-token")),
        Caller("admin", _bearer(admin_token), role=Role.ADMIN),
        Caller(
            "operator", _bearer(_issue(server, admin_token, Role.OPERATOR)[1]), role=Role.OPERATOR
        ),
        Caller("auditor", _bearer(_issue(server, admin_token, Role.AUDITOR)[1]), role=Role.AUDITOR),
        Caller("revoked admin token", _bearer(revoked_token)),
        Caller("expired admin token", _bearer(_token_in_db(server, Role.ADMIN, expired=True))),
        Caller("signed agent", _signed(agent_identity.signer), agent=True),
        Caller("stale agent signature", _signed(agent_identity.signer, age_s=600)),
        Caller("replayed agent request", _replayed(agent_identity.signer)),
        Caller("revoked institution", _signed(revoked_agent.signer)),
    ]
    values = {
        "federation": federation_name,
        "institution": ADMIN_ONLY_SIDE_EFFECT_FREE,
        "token_id": str(spare_token_id),
        "number": "1",
        "version": "0",
    }
    wrong: list[str] = []
    counter = 0
    for endpoint in app_endpoints:
        for caller in callers:
            counter += 1
            url = _url(server, endpoint, values)
            body = _body(endpoint, counter)
            headers = caller.headers(endpoint.method, url, body)
            if body:
                headers["Content-Type"] = "application/json"
            response = httpx.request(
                endpoint.method, url, content=body, headers=headers, timeout=30
            )
            refused = response.status_code in (401, 403)
            if _admitted(endpoint, caller) == refused:
                wrong.append(
                    f"{endpoint.method} {endpoint.path} as {caller.name}: {response.status_code} "
                    f"(declared {endpoint.access.kind.value} "
                    f"{sorted(role.value for role in endpoint.access.roles)})"
                )
            elif refused:
                people_endpoint = endpoint.access.kind is AccessKind.PEOPLE
                expected = 403 if people_endpoint and caller.role is not None else 401
                if response.status_code != expected:
                    wrong.append(
                        f"{endpoint.method} {endpoint.path} as {caller.name}: "
                        f"{response.status_code}, expected {expected}"
                    )
                assert response.headers["content-type"] == "application/problem+json"
    assert not wrong, "\n".join(wrong)
    assert counter == len(app_endpoints) * len(callers)


# -- the web console ------------------------------------------------------------------------


@dataclass(frozen=True)
class Browser:
    """A console caller: the cookie it sends and the CSRF token its forms carry."""

    name: str
    cookie: str | None = None
    csrf: str = ""
    role: Role | None = None  # the role of a valid session
    bearer: str | None = None  # an API token sent as a header instead of a session


def _session(server: CoordinatorServer, token: str) -> tuple[str, str]:
    """Sign in with `token` through the form; the session cookie and the page's CSRF token."""
    signed = httpx.post(
        f"{server.url}{CONSOLE}/sign-in",
        data={"token": token, "next": f"{CONSOLE}/federations"},
        timeout=10,
    )
    assert signed.status_code == 303, signed.text
    cookie = signed.cookies["fmtl_console"]
    page = httpx.get(
        f"{server.url}{CONSOLE}/federations", cookies={"fmtl_console": cookie}, timeout=10
    )
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None
    return cookie, found.group(1)


def _console_request(
    server: CoordinatorServer,
    endpoint: Endpoint,
    browser: Browser,
    counter: int,
    values: dict[str, str],
) -> httpx.Response:
    url = _url(server, endpoint, values)
    cookies = {} if browser.cookie is None else {"fmtl_console": browser.cookie}
    headers = {} if browser.bearer is None else {"Authorization": f"Bearer {browser.bearer}"}
    if endpoint.method == "GET":
        return httpx.get(url, cookies=cookies, headers=headers, timeout=30)
    form: dict[str, str | list[str]] = {"csrf": browser.csrf}
    files = None
    path = endpoint.path
    if path == f"{CONSOLE}/sign-in":
        form = {"token": "fmtl_api_" + "x" * 43}
    elif path == f"{CONSOLE}/federations":
        spec = {
            "name": f"console_{counter}",
            "tasks": [{"name": "t", "kind": "binary"}],
            "model": {"encoder": {"kind": "mlp", "input_dim": 3}},
        }
        files = {"spec": ("spec.json", json.dumps(spec).encode(), "application/json")}
    elif path.endswith("/institutions"):
        form |= {"name": f"console_{counter}", "tasks": ["disease"]}
    return httpx.post(url, data=form, files=files, cookies=cookies, headers=headers, timeout=30)


def _console_refused(response: httpx.Response) -> bool:
    # refused: sent to sign in, and back here after (a sign-out goes to the bare form)
    to_sign_in = response.status_code == 303 and response.headers["location"].startswith(
        f"{CONSOLE}/sign-in?next="
    )
    return to_sign_in or response.status_code in (401, 403)


def _console_admitted(endpoint: Endpoint, browser: Browser) -> bool:
    access = endpoint.access
    if access.kind is AccessKind.PUBLIC:
        return True
    if access.kind is AccessKind.CONSOLE:
        return browser.role is not None and browser.role in access.roles
    return False  # the sign-in form with a bogus token: nobody


def test_only_the_declared_people_see_each_console_page(
    coordinator_server: CoordinatorServer, admin_token: str, federation_name: str
) -> None:
    """Every console route x every kind of browser: pages follow the API's matrix."""
    server = coordinator_server
    everything = endpoints(create_app(server.env.settings(), start_embedded_worker=False))
    console = [e for e in everything if _console(e)]
    kinds = {e.access.kind for e in console}
    assert kinds == {AccessKind.CONSOLE, AccessKind.PUBLIC, AccessKind.SIGN_IN}
    spare_token_id, _ = _issue(server, admin_token, Role.AUDITOR)
    revoked_id, revoked_token = _issue(server, admin_token, Role.ADMIN)
    revoked_cookie, revoked_csrf = _session(server, revoked_token)
    assert httpx.post(
        f"{server.url}/api/v1/tokens/{revoked_id}/revoke",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    ).is_success
    expired_cookie, expired_csrf = _session(server, _token_in_db(server, Role.ADMIN, expired=False))
    _expire_all_matrix_tokens(server)
    admin_cookie, admin_csrf = _session(server, admin_token)
    browsers = [
        Browser("nobody"),
        Browser("garbage cookie", cookie="not-a-session"),
        Browser(
            "forged cookie",
            cookie=admin_cookie[:-4] + ("AAAA" if admin_cookie[-4:] != "AAAA" else "BBBB"),
            csrf=admin_csrf,
        ),
        Browser("API bearer token, no session", bearer=admin_token),
        Browser("admin", admin_cookie, admin_csrf, Role.ADMIN),
        Browser(
            "operator",
            *_session(server, _issue(server, admin_token, Role.OPERATOR)[1]),
            Role.OPERATOR,
        ),
        Browser(
            "auditor", *_session(server, _issue(server, admin_token, Role.AUDITOR)[1]), Role.AUDITOR
        ),
        Browser("session of a revoked token", revoked_cookie, revoked_csrf),
        Browser("session of an expired token", expired_cookie, expired_csrf),
    ]
    values = {
        "federation": federation_name,
        "number": "1",
        "token_id": str(spare_token_id),
        "name": "style.css",
    }
    wrong: list[str] = []
    counter = 0
    for endpoint in console:
        for browser in browsers:
            counter += 1
            response = _console_request(server, endpoint, browser, counter, values)
            refused = _console_refused(response)
            if _console_admitted(endpoint, browser) == refused:
                wrong.append(
                    f"{endpoint.method} {endpoint.path} as {browser.name}: "
                    f"{response.status_code} (declared {endpoint.access.kind.value} "
                    f"{sorted(role.value for role in endpoint.access.roles)})"
                )
            elif refused and endpoint.access.kind is AccessKind.CONSOLE:
                # no session: GETs go to the sign-in page, forms get 401; a role: 403
                expected = (
                    403 if browser.role is not None else (303 if endpoint.method == "GET" else 401)
                )
                if response.status_code != expected:
                    wrong.append(
                        f"{endpoint.method} {endpoint.path} as {browser.name}: "
                        f"{response.status_code}, expected {expected}"
                    )
    assert not wrong, "\n".join(wrong)
    assert counter == len(console) * len(browsers)


def _expire_all_matrix_tokens(server: CoordinatorServer) -> None:
    """Expire the token `_token_in_db(expired=False)` made (its session must die with it)."""
    database = Database(server.env.settings().resolved_database_url)
    with database.scope() as session:
        session.execute(
            sa.update(ApiToken)
            .where(ApiToken.name == f"matrix-{Role.ADMIN.value}")
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
        session.commit()
    database.dispose()
