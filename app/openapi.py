"""The OpenAPI 3.1 document of the API, written by hand and served at /openapi.json."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("openapi", __name__)

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    """Return a $ref to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def body(schema: dict[str, Any], description: str = "OK", media: str = JSON) -> dict[str, Any]:
    """Return a response object with one media type and the tracing headers."""
    content = {media: {"schema": schema}}
    return {"description": description, "headers": TRACING_HEADERS, "content": content}


def header(description: str, required: bool = True) -> dict[str, Any]:
    """Return a string response header object."""
    return {"description": description, "required": required, "schema": {"type": "string"}}


TRACING_HEADERS = {
    "X-Request-ID": {"$ref": "#/components/headers/RequestId"},
    "X-Served-By": {"$ref": "#/components/headers/ServedBy"},
}
HEADERS = {
    "RequestId": header("The request's id: the client's X-Request-ID if sane, else generated."),
    "ServedBy": header("Hostname of the replica that answered."),
}


ERRORS = {
    400: "Malformed JSON body",
    401: "Missing, invalid or expired bearer token",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Wrong Content-Type",
    422: "Invalid fields or parameters",
    503: "Database unavailable",
}


def errors(*statuses: int) -> dict[str, Any]:
    """Return error responses for the given statuses, all in the error envelope."""
    return {str(s): body(ref("Error"), ERRORS[s]) for s in statuses}


def int_param(name: str, low: int, high: int, description: str = "") -> dict[str, Any]:
    """Return an integer query parameter."""
    schema = {"type": "integer", "minimum": low, "maximum": high}
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def id_param(name: str) -> dict[str, Any]:
    """Return a positive 32-bit id path parameter."""
    schema = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def json_request(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a required JSON request body."""
    return {"required": True, "content": {JSON: {"schema": schema}}}


BEARER = [{"bearerAuth": []}]
TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}
TIMESTAMP = {"type": "string", "format": "date-time"}
CREDENTIALS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{3,32}$"},
        "password": {
            "type": "string",
            "minLength": 8,
            "maxLength": 72,
            "description": "At most 72 bytes in UTF-8; longer is refused (422), never truncated.",
        },
    },
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "request_id": {"type": ["string", "null"]},
        },
    },
    "Credentials": CREDENTIALS,
    "User": {
        "type": "object",
        "required": ["id", "username", "role", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "admin"]},
            "created_at": TIMESTAMP,
        },
    },
    "UserList": {
        "type": "object",
        "required": ["items", "total", "limit", "offset"],
        "properties": {
            "items": {"type": "array", "items": ref("User")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "Token": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "description": "Seconds."},
        },
    },
    "PostCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["title", "body"],
        "properties": {
            "title": {**TEXT, "maxLength": 200},
            "body": {**TEXT, "maxLength": 10000},
        },
    },
    "PostPatch": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "title": {**TEXT, "maxLength": 200},
            "body": {**TEXT, "maxLength": 10000},
        },
    },
    "Post": {
        "type": "object",
        "required": ["id", "title", "body", "author", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "string"},
            "body": {"type": "string"},
            "author": {
                "type": "object",
                "required": ["id", "username"],
                "properties": {"id": {"type": "integer"}, "username": {"type": "string"}},
            },
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        },
    },
    "PostList": {
        "type": "object",
        "required": ["items", "total", "limit", "offset"],
        "properties": {
            "items": {"type": "array", "items": ref("Post")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "Upload": {
        "type": "object",
        "required": ["id", "filename", "size", "sha256", "content_type", "url", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "filename": {"type": "string", "description": "Sanitised client filename."},
            "size": {"type": "integer"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "content_type": {"type": "string"},
            "url": {"type": "string"},
            "created_at": TIMESTAMP,
        },
    },
    "Echo": {
        "type": "object",
        "required": [
            "method",
            "path",
            "args",
            "query_string",
            "form",
            "json",
            "headers",
            "client_ip",
            "files",
        ],
        "properties": {
            "method": {"type": "string"},
            "path": {"type": "string"},
            "args": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "query_string": {"type": "string"},
            "form": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "json": {"description": "The JSON body if it parsed, else null."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "client_ip": {"type": ["string", "null"]},
            "scheme": {"type": "string"},
            "files": {"type": "array", "items": {"type": "object"}},
        },
    },
    "World": {
        "type": "object",
        "required": ["id", "randomNumber"],
        "properties": {"id": {"type": "integer"}, "randomNumber": {"type": "integer"}},
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "database": {"type": "string"}},
    },
}
QUERIES = int_param("queries", 1, 500, "Clamped to 1..500; a non-number means 1.")
ECHO_BODY = {
    "required": False,
    "content": {
        JSON: {"schema": {}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        "multipart/form-data": {"schema": {"type": "object"}},
    },
}
PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "Service name, version and links",
            "responses": {"200": body({"type": "object"})},
        }
    },
    "/healthz": {
        "get": {"summary": "Liveness (no database)", "responses": {"200": body(ref("Status"))}}
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: a database round trip",
            "responses": {"200": body(ref("Status")), **errors(503)},
        }
    },
    "/api/auth/register": {
        "post": {
            "summary": "Create an account",
            "requestBody": json_request(ref("Credentials")),
            "responses": {
                "201": body(ref("User"), "Created"),
                **errors(400, 409, 413, 415, 422, 503),
            },
        }
    },
    "/api/auth/login": {
        "post": {
            "summary": "Get a bearer token",
            "requestBody": json_request(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string", "minLength": 1, "maxLength": 32},
                        "password": {"type": "string", "minLength": 1, "maxLength": 72},
                    },
                }
            ),
            "responses": {"200": body(ref("Token")), **errors(400, 401, 413, 415, 422, 503)},
        }
    },
    "/api/auth/me": {
        "get": {
            "summary": "The caller",
            "security": BEARER,
            "responses": {"200": body(ref("User")), **errors(401, 503)},
        }
    },
    "/api/admin/users": {
        "get": {
            "summary": "All users (admin only)",
            "security": BEARER,
            "parameters": [int_param("limit", 1, 100), int_param("offset", 0, 1_000_000)],
            "responses": {"200": body(ref("UserList")), **errors(401, 403, 422, 503)},
        }
    },
    "/api/posts": {
        "get": {
            "summary": "List posts, newest first",
            "parameters": [
                int_param("limit", 1, 100),
                int_param("offset", 0, 1_000_000),
                {
                    "name": "q",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                    "description": "Case-insensitive substring of title or body.",
                },
            ],
            "responses": {"200": body(ref("PostList")), **errors(422, 503)},
        },
        "post": {
            "summary": "Create a post",
            "security": BEARER,
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,255}$"},
                    "description": "Retries with the same key and body replay the first result.",
                }
            ],
            "requestBody": json_request(ref("PostCreate")),
            "responses": {
                "201": {
                    **body(ref("Post"), "Created (or replayed)"),
                    "headers": {
                        **TRACING_HEADERS,
                        "Location": header("URL of the post."),
                        "Idempotent-Replayed": header(
                            "`true` when this is a stored replay.", required=False
                        ),
                    },
                },
                **errors(400, 401, 409, 413, 415, 422, 503),
            },
        },
    },
    "/api/posts/{post_id}": {
        "parameters": [id_param("post_id")],
        "get": {"summary": "One post", "responses": {"200": body(ref("Post")), **errors(404, 503)}},
        "patch": {
            "summary": "Change a post (author or admin)",
            "security": BEARER,
            "requestBody": json_request(ref("PostPatch")),
            "responses": {
                "200": body(ref("Post")),
                **errors(400, 401, 403, 404, 413, 415, 422, 503),
            },
        },
        "delete": {
            "summary": "Delete a post (author or admin)",
            "security": BEARER,
            "responses": {
                "204": {"description": "Deleted", "headers": TRACING_HEADERS},
                **errors(401, 403, 404, 503),
            },
        },
    },
    "/api/uploads": {
        "post": {
            "summary": "Upload a file (multipart field `file`)",
            "security": BEARER,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            },
            "responses": {"201": body(ref("Upload"), "Created"), **errors(401, 413, 415, 422, 503)},
        }
    },
    "/api/uploads/{upload_id}": {
        "parameters": [id_param("upload_id")],
        "get": {
            "summary": "The file's bytes, as an attachment",
            "responses": {
                "200": {
                    "description": "The file",
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                **errors(404, 503),
            },
        },
    },
    "/api/echo": {
        "get": {
            "summary": "What the server saw",
            "responses": {"200": body(ref("Echo")), **errors(413)},
        },
        "post": {
            "summary": "What the server saw",
            "requestBody": ECHO_BODY,
            "responses": {"200": body(ref("Echo")), **errors(413)},
        },
    },
    "/bench/plaintext": {
        "get": {
            "summary": "TechEmpower plaintext",
            "responses": {"200": body({"type": "string"}, media="text/plain")},
        }
    },
    "/bench/json": {
        "get": {
            "summary": "TechEmpower JSON serialisation",
            "responses": {
                "200": body(
                    {
                        "type": "object",
                        "required": ["message"],
                        "properties": {"message": {"type": "string"}},
                    }
                )
            },
        }
    },
    "/bench/db": {
        "get": {
            "summary": "TechEmpower single query",
            "responses": {"200": body(ref("World")), **errors(503)},
        }
    },
    "/bench/queries": {
        "get": {
            "summary": "TechEmpower multiple queries",
            "parameters": [QUERIES],
            "responses": {"200": body({"type": "array", "items": ref("World")}), **errors(503)},
        }
    },
    "/bench/updates": {
        "get": {
            "summary": "TechEmpower updates",
            "parameters": [QUERIES],
            "responses": {"200": body({"type": "array", "items": ref("World")}), **errors(503)},
        }
    },
    "/bench/fortunes": {
        "get": {
            "summary": "TechEmpower fortunes (HTML)",
            "responses": {"200": body({"type": "string"}, media="text/html"), **errors(503)},
        }
    },
    "/bench/io": {
        "get": {
            "summary": "Sleep ms milliseconds (capped at 1000), standing for a slow upstream",
            "parameters": [int_param("ms", 0, 1000)],
            "responses": {
                "200": body(
                    {
                        "type": "object",
                        "required": ["slept_ms"],
                        "properties": {"slept_ms": {"type": "integer"}},
                    }
                )
            },
        }
    },
    "/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": body({"type": "object"})}}
    },
}


def document(version: str) -> dict[str, Any]:
    """Return the OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flaskstack demo API",
            "version": version,
            "description": "Errors always use the Error envelope. Every response carries "
            "X-Request-ID and X-Served-By.",
        },
        "servers": [{"url": "/"}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "headers": HEADERS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """Serve the OpenAPI document."""
    return jsonify(document(current_app.config["VERSION"]))
