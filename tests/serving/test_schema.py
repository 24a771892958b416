"""/openapi.json: served (unless turned off), with each API's real error statuses and media types; and Schemathesis
against it on a live server in this process: no 5xx, and every status, media type and body as documented."""

from __future__ import annotations

import httpx
import pytest

from .conftest import loader, start_server

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

# The fuzz server's context, so that a generated `n_predict: -1` or a large max_tokens ends within a few tokens:
# the test is about shapes and statuses, bounded to about a minute on two cores.
CONTEXT = 48


def test_the_schema_lists_each_apis_own_statuses_and_media_types(server):
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in ("/v1/completions", "/infill", "/completion", "/score", "/api/generate"):
        assert "400" in paths[path]["post"]["responses"] and "422" not in paths[path]["post"]["responses"], path
    for path in ("/", "/generate", "/generate_stream"):
        assert "422" in paths[path]["post"]["responses"] and "400" not in paths[path]["post"]["responses"], path
    assert list(paths["/generate_stream"]["post"]["responses"]["200"]["content"]) == ["text/event-stream"]
    assert "application/x-ndjson" in paths["/api/generate"]["post"]["responses"]["200"]["content"]
    assert "501" in paths["/infill"]["post"]["responses"]


def never_loads():
    import threading

    threading.Event().wait(60)


def test_the_schema_can_be_turned_off():
    live = start_server(never_loads, ready=False, openapi=False)
    try:
        assert httpx.get(f"{live.url}/openapi.json").status_code == 404
    finally:
        live.stop()


@pytest.fixture(scope="module")
def small_server(instruct_folder):
    load = loader(instruct_folder)

    def small():
        service = load()
        service.context_tokens = CONTEXT
        return service

    live = start_server(small)
    yield live
    live.stop()


OPERATIONS = ["GET /v1/models", "POST /v1/completions", "POST /v1/chat/completions", "POST /infill",
              "POST /completion", "POST /", "POST /generate", "POST /generate_stream", "POST /score",
              "POST /api/generate", "POST /api/chat", "GET /api/tags", "POST /api/show", "GET /api/version",
              "GET /health"]


@pytest.fixture(scope="module")
def operations(small_server):
    schema = schemathesis.openapi.from_url(f"{small_server.url}/openapi.json")
    return {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}


def test_every_operation_is_fuzzed(operations):
    assert sorted(operations) == sorted(OPERATIONS)


@pytest.mark.parametrize("name", OPERATIONS)
def test_no_5xx_and_every_answer_as_documented(operations, name):
    op = operations[name]
    # valid bodies, and (where there is a body) bodies the schema rules out, which must get the documented 4xx
    modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * (op.method.upper() == "POST")
    @given(case=st.one_of(*(op.as_strategy(generation_mode=mode) for mode in modes)))
    @settings(max_examples=20, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance], timeout=60)

    fuzz()
