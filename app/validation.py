"""Strict request parsing: 415 not JSON, 400 malformed, 422 invalid fields (with a fields map)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flask import request
from werkzeug.routing import IntegerConverter

from .errors import APIError

JSON_BODY_LIMIT = 64 * 1024
INT_PATTERN = re.compile(r"[+-]?\d{1,18}")
MAX_ID = 2**31 - 1


class IdConverter(IntegerConverter):
    """A database id in a URL; one outside 1..2**31-1 becomes 0, which no row has (so a 404).

    Raising ValidationError instead makes werkzeug answer 405 for PATCH/DELETE on such paths.
    """

    def to_python(self, value: str) -> int:
        """Convert the matched digits, mapping impossible ids to 0."""
        number = int(value) if len(value) <= 10 else 0
        return number if 1 <= number <= MAX_ID else 0


@dataclass(frozen=True)
class Field:
    """Rules for one JSON field: its type, whether it is required, and its length bounds."""

    kind: type
    required: bool = True
    min_length: int = 1
    max_length: int = 1000
    pattern: re.Pattern[str] | None = None
    hint: str = ""


def _reject_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Parse JSON bytes; raise ValueError for anything that is not strict JSON."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def json_object() -> dict[str, Any]:
    """Return the request body as a JSON object, or raise 415/413/400/422."""
    if not request.is_json:
        raise APIError(415, "Content-Type must be application/json.")
    limit = request.max_content_length
    request.max_content_length = JSON_BODY_LIMIT if limit is None else min(limit, JSON_BODY_LIMIT)
    try:
        data = parse_json(request.get_data(cache=True))
    except ValueError:
        raise APIError(400, "The request body is not valid JSON.", "malformed_json") from None
    if not isinstance(data, dict):
        raise APIError(422, "The request body must be a JSON object.")
    return data


def validate(
    data: dict[str, Any], schema: dict[str, Field], partial: bool = False
) -> dict[str, Any]:
    """Check data against schema: no unknown fields, right types and lengths; raise 422."""
    errors = {name: "unknown field" for name in data if name not in schema}
    clean: dict[str, Any] = {}
    for name, rule in schema.items():
        if name not in data:
            if rule.required and not partial:
                errors[name] = "required"
            continue
        problem = check_value(data[name], rule)
        if problem:
            errors[name] = problem
        else:
            clean[name] = data[name]
    if errors:
        raise APIError(422, "The request has invalid fields.", fields=errors)
    return clean


def check_value(value: Any, rule: Field) -> str | None:
    """Return why value breaks rule, or None."""
    if rule.kind is str:
        if not isinstance(value, str):
            return "must be a string"
        return check_text(value, rule)
    if rule.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        return "must be an integer"
    return None


def check_text(value: str, rule: Field) -> str | None:
    """Return why a string breaks rule (length, NUL, invalid Unicode, pattern), or None."""
    if not rule.min_length <= len(value) <= rule.max_length:
        return f"must be {rule.min_length} to {rule.max_length} characters"
    if "\x00" in value or not is_encodable(value):
        return "must be valid text without NUL characters"
    if rule.min_length and not value.strip():
        return "must not be blank"
    if rule.pattern and not rule.pattern.fullmatch(value):
        return rule.hint or "has an invalid format"
    return None


def is_encodable(value: str) -> bool:
    """Tell whether a string can be stored as UTF-8 (lone surrogates cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """Read an integer query argument within [low, high]; raise 422 otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not INT_PATTERN.fullmatch(raw) or not low <= int(raw) <= high:
        raise APIError(
            422, "Invalid query parameter.", fields={name: f"must be an integer {low}..{high}"}
        )
    return int(raw)


def text_arg(name: str, max_length: int) -> str | None:
    """Read an optional text query argument; raise 422 when too long or containing NUL."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length or "\x00" in raw:
        raise APIError(
            422,
            "Invalid query parameter.",
            fields={name: f"must be at most {max_length} characters, without NUL"},
        )
    return raw


def json_body(schema: dict[str, Field], partial: bool = False) -> dict[str, Any]:
    """Return the validated JSON object body."""
    return validate(json_object(), schema, partial)
