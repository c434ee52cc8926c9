"""Payload schemas: one declaration per job type, used to validate and to document.

A schema validates a decoded JSON object, collecting every bad field (not only the first),
and renders itself as JSON Schema for the OpenAPI document. It is deliberately small: flat
objects of scalar fields, which is all a job payload should need.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from domain.errors import FieldError, InvalidJobError

# A local part without the characters that need quoting, then a host name: labels of 1-63
# letters, digits and inner hyphens, and a top-level domain of letters.
_EMAIL: Final = re.compile(
    r"^[^@\s\"<>()\[\],;:\\]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z"
)
_MISSING: Final = object()


class Kind(enum.StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    ANY = "any"  # any JSON value, bounded only by the request size limit


@attrs.frozen(kw_only=True)
class Field:
    name: str
    kind: Kind
    description: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    choices: tuple[str, ...] | None = None
    # Values this deployment knows but refuses, each with the reason a client is told (they
    # are left out of `choices`, so the documents do not offer them).
    refused: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    email: bool = False

    def problems(self, value: object) -> list[str]:
        """What is wrong with `value` for this field: no messages when nothing is."""
        match self.kind:
            case Kind.ANY:
                return []
            case Kind.BOOLEAN:
                return [] if isinstance(value, bool) else ["expected a boolean"]
            case Kind.STRING:
                return self._string_problems(value)
            case Kind.INTEGER:
                if isinstance(value, bool) or not isinstance(value, int):
                    return ["expected an integer"]
                return self._range_problems(value)
            case Kind.NUMBER:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return ["expected a number"]
                if isinstance(value, float) and not math.isfinite(value):
                    return ["expected a finite number"]
                return self._range_problems(value)

    def _string_problems(self, value: object) -> list[str]:
        if not isinstance(value, str):
            return ["expected a string"]
        if value in self.refused:
            return [self.refused[value]]
        if self.choices is not None and value not in self.choices:
            return [f"expected one of {', '.join(self.choices)}"]
        if self.min_length is not None and len(value) < self.min_length:
            return [f"expected at least {self.min_length} characters"]
        if self.max_length is not None and len(value) > self.max_length:
            return [f"expected at most {self.max_length} characters"]
        if self.email and not _EMAIL.match(value):
            return ["expected an email address like user@example.com"]
        return []

    def _range_problems(self, value: float) -> list[str]:
        if self.minimum is not None and value < self.minimum:
            return [f"expected a value >= {self.minimum:g}"]
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            return [f"expected a value > {self.exclusive_minimum:g}"]
        if self.maximum is not None and value > self.maximum:
            return [f"expected a value <= {self.maximum:g}"]
        return []

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"description": self.description}
        # An optional field given as null counts as not given (see `PayloadSchema.validate`).
        if self.kind is not Kind.ANY:
            schema["type"] = str(self.kind) if self.required else [str(self.kind), "null"]
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
        ):
            if value is not None:
                schema[key] = value
        if self.choices is not None:
            schema["enum"] = [*self.choices] if self.required else [*self.choices, None]
        if self.email:
            schema["format"] = "email"
        if not self.required and self.default is not None:
            schema["default"] = self.default
        return schema


# A rule across fields, e.g. "`how` only makes sense with mode crash". Returns the errors.
CrossCheck = Callable[[Mapping[str, Any]], Sequence[FieldError]]


@attrs.frozen
class PayloadSchema:
    fields: tuple[Field, ...]
    cross_checks: tuple[CrossCheck, ...] = ()
    # JSON Schema keywords saying what the cross checks enforce, for the documents.
    rules: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    # The field names, once: a worker validates every payload it runs.
    field_names: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "field_names", frozenset(f.name for f in self.fields))

    def validate(self, data: object, *, path: str = "payload") -> dict[str, Any]:
        """The payload with defaults filled in; raises InvalidJobError listing every bad field."""
        if not isinstance(data, Mapping):
            raise InvalidJobError([FieldError(path, "expected a JSON object")])
        errors: list[FieldError] = []
        known = self.field_names
        for key in data:
            if key not in known:
                errors.append(FieldError(f"{path}.{key}", "unknown field"))
        clean: dict[str, Any] = {}
        for field in self.fields:
            value = data.get(field.name, _MISSING)
            if value is _MISSING or (value is None and not field.required):
                if field.required:
                    errors.append(FieldError(f"{path}.{field.name}", "field required"))
                elif field.default is not None:
                    clean[field.name] = field.default
                continue
            problems = field.problems(value)
            if problems:
                errors.extend(FieldError(f"{path}.{field.name}", p) for p in problems)
            else:
                clean[field.name] = value
        if not errors:
            for rule in self.cross_checks:
                errors.extend(
                    FieldError(f"{path}.{e.path}" if e.path else path, e.message)
                    for e in rule(clean)
                )
        if errors:
            raise InvalidJobError(errors)
        return clean

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {f.name: f.json_schema() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
            **self.rules,
        }
