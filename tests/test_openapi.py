"""The OpenAPI description: complete, true for real answers, and fuzzed with schemathesis."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sponsord.app import create_app
from sponsord.config import Config
from sponsord.keys import HUB
from sponsord.openapi import document
from sponsord.simulator import Simulator
from sponsord.snapshot import Snapshot, SnapshotStore
from sponsord.webhooks import sign

from .conftest import WEBHOOK_SECRET, with_server
from .live import ThreadedStack, record_figures

Client = TestClient[web.Request, web.Application]
MakeConfig = Callable[..., Config]

DOC = document("http://sponsors.test")

#: A version no generated ``since`` will hit, so fuzzed long-polls answer at once.
FUZZ_VERSION = 987_654_321

#: Examples per operation and generation mode: bounded, and the same on every run.
FUZZ_EXAMPLES = 40


#: The headers of a WebSocket handshake, for requests that must be refused before it.
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def spec_path(resource: web.AbstractResource) -> str:
    """The OpenAPI path of an aiohttp resource (static files under ``{path}``)."""
    if isinstance(resource, web.StaticResource):
        return resource.canonical + "/{path}"
    return re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", resource.canonical)


def test_every_route_is_documented_and_nothing_else(make_config: MakeConfig) -> None:
    """Each (method, path) of the app's router is an operation of the document, and vice versa."""
    app = create_app(make_config())
    routed = {(r.method.lower(), spec_path(r.resource)) for r in app.router.routes() if r.resource}
    documented = {(m, p) for p, item in DOC["paths"].items() for m in item}
    for method, path in routed:
        wanted = "get" if method == "head" else method  # HEAD mirrors GET (info.description)
        assert (wanted, path) in documented, f"{method.upper()} {path} is not in sponsord/openapi.py"
    assert documented <= routed, f"documented but not routed: {documented - routed}"


def test_document_is_a_valid_openapi_31_schema_set() -> None:
    """The document loads in schemathesis and every component is a valid JSON Schema."""
    schema = schemathesis.openapi.from_dict(DOC)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in DOC["paths"].values())
    for name in DOC["components"]["schemas"]:
        jsonschema_rs.validator_for(component(name))
    assert DOC["openapi"] == "3.1.0" and json.loads(json.dumps(DOC)) == DOC


def component(name: str) -> dict[str, Any]:
    """A validatable JSON Schema for ``#/components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}


def check_answer(
    path: str, method: str, status: int, headers: Any, body: bytes, seen: set[tuple[str, str, int]]
) -> None:
    """Assert the answer is documented: status, media type, headers and body schema."""
    operation = DOC["paths"][path][method]
    answer = operation["responses"].get(str(status))
    assert answer is not None, f"{method.upper()} {path} answered undocumented {status}"
    seen.add((path, method, status))
    for name in answer.get("headers", {}):
        if name not in ("Access-Control-Allow-Origin", "Cache-Control"):
            assert name in headers, f"{method.upper()} {path} {status} lacks {name}"
    content = answer.get("content")
    if not body or not content:
        assert not content or status == 101 or body, f"{path} {status}: empty body"
        return
    media = headers.get("Content-Type", "").split(";")[0].strip()
    assert media in content, f"{method.upper()} {path} {status}: {media} not documented"
    schema = content[media]["schema"]
    if media == "application/json":
        instance = json.loads(body)
        validator = jsonschema_rs.validator_for({**schema, "components": DOC["components"]})
        errors = [str(e) for e in validator.iter_errors(instance)]
        assert not errors, f"{method.upper()} {path} {status}: {errors[:3]}"


@pytest.fixture
async def sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[Simulator, str]:
    s = Simulator.with_members(30, seed=4)
    server = await aiohttp_server(s.app)
    return s, str(server.make_url("")).rstrip("/")


async def test_real_answers_match_the_document(
    sim: tuple[Simulator, str], aiohttp_client: Callable[..., Awaitable[Client]], make_config: MakeConfig
) -> None:
    """Every documented status of the public routes, produced for real, validates against the document."""
    simulator, base = sim
    config = with_server(make_config(base), max_clients_per_address=2, metrics_allow=("10.0.0.0/8",))
    simulator.inject("hang")
    client = await aiohttp_client(create_app(config))
    seen: set[tuple[str, str, int]] = set()

    async def call(method: str, path: str, url: str | None = None, **kw: Any) -> aiohttp.ClientResponse:
        resp = await client.request(method.upper(), url or path, **kw)
        check_answer(path, method, resp.status, resp.headers, await resp.read(), seen)
        return resp

    await call("get", "/v1/supporters")  # 503: the first refresh hangs
    await call("get", "/healthz")
    hub = client.app[HUB]
    while hub.snapshot is None:
        await client.app[HUB].wait_change(None, 5)
    ok = await call("get", "/v1/supporters", headers={"Origin": "https://example.com"})
    await call("get", "/v1/supporters", headers={"If-None-Match": ok.headers["ETag"]})
    await call("options", "/v1/supporters", headers={"Origin": "https://example.com"})
    await call("options", "/v1/supporters/poll", headers={"Origin": "https://example.com"})
    version = hub.snapshot.version  # type: ignore[union-attr]
    await call("get", "/v1/supporters/poll", params={"since": "0"})
    await call("get", "/v1/supporters/poll", params={"since": str(version), "wait": "0.05"})
    await call("get", "/v1/supporters/poll", params={"since": "x"})
    await call("get", "/v1/supporters/websocket")  # a plain GET is not a handshake
    await call("get", "/v1/supporters/websocket", headers={**UPGRADE, "Origin": "https://evil.example"})
    sockets = [await client.ws_connect("/v1/supporters/websocket") for _ in range(2)]
    frame = await sockets[0].receive_json(timeout=5)
    errors = list(jsonschema_rs.validator_for(component("FullState")).iter_errors(frame))
    assert not errors
    seen.add(("/v1/supporters/websocket", "get", 101))
    await call("get", "/v1/supporters/poll", params={"since": str(version), "wait": "1"})  # 503: cap
    await call("get", "/v1/supporters/websocket", headers=UPGRADE)  # 503: cap
    for ws in sockets:
        await ws.close()
    body = b'{"data": {"type": "member"}}'
    sig = sign(WEBHOOK_SECRET, body)
    hook = "/v1/webhooks/patreon"
    for event, signature in (("members:create", sig), ("posts:publish", sig), ("members:create", "0")):
        headers = {"X-Patreon-Event": event, "X-Patreon-Signature": signature}
        await call("post", hook, data=body, headers=headers)
    await call("post", hook, data=b"x" * (256 * 1024 + 1), headers={"X-Patreon-Signature": sig})
    await call("get", "/healthz")
    await call("get", "/metrics")  # 403: metrics_allow excludes loopback here
    await call("get", "/")
    await call("get", "/embed.js")
    await call("get", "/static/{path}", url="/static/no-such-file.css")
    spec = await call("get", "/v1/openapi.json")
    assert (await spec.json())["paths"].keys() == DOC["paths"].keys()
    documented = {
        (p, m, int(s)) for p, item in DOC["paths"].items() for m, op in item.items() for s in op["responses"]
    }
    # Not produced here: a 200 static file (its name is versioned), 400 from a
    # malformed body, 408 from a stalled one (test_fuzz/test_hostile), 200 metrics.
    missing = documented - seen
    assert missing <= {
        ("/static/{path}", "get", 200),
        ("/v1/webhooks/patreon", "post", 400),
        ("/v1/webhooks/patreon", "post", 408),
        ("/metrics", "get", 200),
    }, missing


def fuzz_config(make_config: MakeConfig, state: Path) -> Callable[[str], Config]:
    """A config whose persisted snapshot has a version no fuzzed ``since`` matches."""
    SnapshotStore(state).save(Snapshot.build(FUZZ_VERSION, datetime(2026, 1, 1, tzinfo=UTC), [], 20))

    def make(base: str) -> Config:
        config = make_config(base)
        assert config.state.dir == state
        return config

    return make


def fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    cases: dict[str, int],
    statuses: dict[str, int],
) -> None:
    """Run FUZZ_EXAMPLES schemathesis cases of ``operation`` in ``mode`` against ``base_url``."""
    checks = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:  # valid requests must also get documented answers
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]

    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=10)
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        cases[mode.value] += 1
        case.validate_response(response, checks=checks)

    run()


@pytest.mark.timeout(120)
def test_schemathesis_finds_no_server_error(make_config: MakeConfig, tmp_path: Path) -> None:
    """Schemathesis, positive and negative, against the live app: no 5xx; positive answers conform."""
    schema = schemathesis.openapi.from_dict(DOC)
    operations = [result.ok() for result in schema.get_all_operations()]
    sim = Simulator.with_members(30, seed=5)
    cases = {"positive": 0, "negative": 0}
    statuses: dict[str, int] = {}
    no_negative: list[str] = []
    with (
        ThreadedStack(fuzz_config(make_config, tmp_path / "state"), sim) as stack,
        requests.Session() as session,
    ):
        for operation in operations:
            fuzz(operation, GenerationMode.POSITIVE, stack.url, session, cases, statuses)
            try:
                fuzz(operation, GenerationMode.NEGATIVE, stack.url, session, cases, statuses)
            except Unsatisfiable:  # nothing to get wrong: no parameter, or only free strings
                no_negative.append(f"{operation.method.upper()} {operation.path}")
    record_figures(
        "schemathesis",
        {
            "operations": len(operations),
            "cases": cases,
            "total": sum(cases.values()),
            "statuses": statuses,
            "no_negative_case_possible": no_negative,
        },
    )
    assert not any(s.startswith("5") for s in statuses)
