"""OpenAPI-driven fuzzing with schemathesis through the WSGI app: no 5xx, documented answers."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import bench
from app.openapi import PATHS
from tests.conftest import AuthActions


def has_inputs(item: dict[str, Any], operation: dict[str, Any]) -> bool:
    """Tell whether an operation takes parameters or a body (else there is nothing to break)."""
    return bool(
        item.get("parameters") or operation.get("parameters") or operation.get("requestBody")
    )


# Every documented operation with valid data; those that take input also with invalid data.
OPERATIONS = [
    (method.upper(), path, mode)
    for path, item in PATHS.items()
    for method, operation in item.items()
    if method != "parameters" and path != "/openapi.json"
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or has_inputs(item, operation)
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_operation_never_answers_5xx(
    app: Flask, auth: AuthActions, monkeypatch, method: str, path: str, mode: GenerationMode
) -> None:
    monkeypatch.setattr(bench.time, "sleep", lambda _seconds: None)
    headers = auth.headers("fuzzer")
    seed = auth.headers("poster")
    for i in range(3):  # something for the id-taking operations to find
        app.test_client().post("/api/posts", json={"title": f"t{i}", "body": "b"}, headers=seed)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operation = schema[path][method]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            assert response.json()["error"]["status"] == response.status_code
            assert response.json()["request_id"] == response.headers["x-request-id"][0]

    run()
