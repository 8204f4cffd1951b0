"""Index, liveness, readiness and the OpenAPI document."""

import re

from flask import Flask
from flask.testing import FlaskClient


def test_index_lists_links(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.json["name"] == "flaskstack"
    assert response.json["version"]
    assert response.json["links"]["openapi"] == "/openapi.json"


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok"}


def test_openapi_documents_every_route(app: Flask, client: FlaskClient) -> None:
    document = client.get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert served == documented


def test_openapi_rejects_unknown_fields_where_the_api_does(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name in ("Credentials", "PostCreate", "PostPatch"):
        assert schemas[name]["additionalProperties"] is False
