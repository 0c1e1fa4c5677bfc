"""Property-based fuzzing of the scoring API from its own OpenAPI schema: no request gets a 5xx.

hypothesis-jsonschema draws requests from the app's /openapi.json (bodies and parameters the
schema allows), and hypothesis draws what it does not (any JSON, any bytes, any path); they go
through FastAPI's TestClient to the tiny served setup of test_serve.py. A correctly configured
server answers each with a 2xx or a 4xx, and every 2xx matches the response schema.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from features.core.prepare import text_id as text_id_of
from tests.pipelines.test_serve import DATASET, project  # noqa: F401  (the served setup, a module fixture)

FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Bodies that are JSON only to Python's parser, or strain it: NaN, huge numbers, lone surrogates, deep nesting.
ODD_JSON = st.builds(lambda value, wrap: b'{"texts": %s%s%s}' % (b"[" * wrap, value, b"]" * wrap),
                     st.sampled_from([b"NaN", b"-Infinity", b"1e400", b"1" * 5000, b'"\\ud800"', b'"\\u0000"',
                                      b'"w1", "w1"', b'"w1"], "w1": [1']),
                     st.integers(0, 1200))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)


def inlined(node: Any, components: dict[str, Any]) -> Any:
    """`node` with every `#/components/schemas/...` reference replaced by the schema it names."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inlined(components[node["$ref"].rsplit("/", 1)[1]], components)
        return {key: inlined(value, components) for key, value in node.items()}
    if isinstance(node, list):
        return [inlined(value, components) for value in node]
    return node


@pytest.fixture(scope="module")
def api(project: dict) -> dict[str, Any]:  # noqa: F811
    """The client and, from its OpenAPI schema, the request and response schemas of each operation."""
    openapi = project["client"].get("/openapi.json").json()
    components, paths = openapi["components"]["schemas"], openapi["paths"]

    def response(path: str, method: str) -> dict:
        return inlined(paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"], components)

    stored = paths["/score/{text_id}"]["get"]["parameters"]
    return {
        "client": project["client"],
        "stored_id": text_id_of(DATASET, project["texts"][70]),
        "score_request": inlined(paths["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"],
                                 components),
        "score_response": response("/score", "post"),
        "stored_params": {p["name"]: inlined(p["schema"], components) for p in stored},
        "stored_response": response("/score/{text_id}", "get"),
    }


def check(response: Any, statuses: Counter, schema: dict | None = None) -> None:
    """No 5xx; a 2xx body matches the operation's response schema."""
    statuses[response.status_code] += 1
    assert response.status_code < 500, (response.request.method, response.request.url, response.text)
    if schema is not None and response.status_code == 200:
        jsonschema.validate(response.json(), schema)


def test_score_requests_the_schema_allows_get_no_5xx(api: dict) -> None:
    statuses: Counter = Counter()

    @FUZZ
    @given(body=from_schema(api["score_request"]))
    def fuzz(body: dict) -> None:
        check(api["client"].post("/score", json=body), statuses, api["score_response"])

    fuzz()
    assert statuses[200] > 0, statuses  # the fuzz reached the scorer, not only validation


def test_score_bodies_the_schema_refuses_get_a_4xx(api: dict) -> None:
    statuses: Counter = Counter()

    @FUZZ
    @given(body=JSON | st.fixed_dictionaries({"texts": JSON}), raw=st.binary(max_size=64) | ODD_JSON)
    def fuzz(body: Any, raw: bytes) -> None:
        response = api["client"].post("/score", json=body)
        check(response, statuses)
        if not (isinstance(body, dict) and body.keys() == {"texts"}):
            assert response.status_code == 422
        check(api["client"].post("/score", content=raw, headers={"Content-Type": "application/json"}), statuses)

    fuzz()
    assert statuses[422] > 0, statuses


def test_stored_text_lookups_get_no_5xx(api: dict) -> None:
    params, statuses = api["stored_params"], Counter()

    @FUZZ
    @given(text_id=from_schema(params["text_id"]) | st.just(api["stored_id"]),
           dataset=from_schema(params["dataset"]) | st.text(max_size=8))
    def fuzz(text_id: str, dataset: str) -> None:
        response = api["client"].get(f"/score/{quote(text_id, safe='')}", params={"dataset": dataset})
        check(response, statuses, api["stored_response"])

    fuzz()
    assert statuses[200] > 0 and statuses[404] > 0, statuses
    for path in "/health", "/ready":
        assert api["client"].get(path).status_code == 200
