"""Turning payloads into JSON text for the database and back, with typed errors.

orjson serialises; two of its leniencies are closed here because PostgreSQL or JSON would
lose data: NaN and Infinity (orjson writes ``null``) and the NUL character (jsonb refuses it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import orjson
import pydantic

from pgbatch import errors

_NUL_ESCAPE = b"\\u0000"
# A real NUL is written \u0000 after an even number of backslashes (each pair is one escaped
# backslash); after an odd number it is the harmless text "\u0000" (written \\u0000).
_NUL_ESCAPE_EXACT = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _check_strict_json(obj: Any, index: int | None) -> None:
    # Only reached when orjson's output contains "null": NaN/Infinity may have become null.
    try:
        json.dumps(obj, allow_nan=False, default=_default_for_check)
    except ValueError as exc:
        raise errors.PayloadNotJSON(
            f"payload{_where(index)} is not JSON: {exc}", index=index
        ) from None


def _default_for_check(obj: Any) -> Any:
    # Types orjson accepts natively (datetime, UUID, dataclass...) pass the NaN check.
    return str(obj)


def _where(index: int | None) -> str:
    return "" if index is None else f" at index {index}"


def encode_json(obj: Any, *, index: int | None = None) -> bytes:
    """JSON bytes for one value, or PayloadNotJSON."""
    try:
        data = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise errors.PayloadNotJSON(
            f"payload{_where(index)} is not JSON-serialisable: {exc}", index=index
        ) from None
    if b"null" in data:
        _check_strict_json(obj, index)
    if _NUL_ESCAPE in data and _NUL_ESCAPE_EXACT.search(data):
        raise errors.PayloadNotJSON(
            f"payload{_where(index)} contains a NUL character (\\u0000), which PostgreSQL"
            " jsonb cannot store",
            index=index,
        )
    return data


def _validation_error(exc: pydantic.ValidationError, index: int) -> errors.PayloadValidationError:
    fields = [".".join(str(part) for part in err["loc"]) or "<root>" for err in exc.errors()]
    first = exc.errors()[0]
    return errors.PayloadValidationError(
        f"payload at index {index} fails {exc.title}: field {fields[0]!r}: {first['msg']}",
        index=index,
        fields=fields,
    )


def encode_payloads(
    payloads: Sequence[Any],
    *,
    model: type[pydantic.BaseModel] | None,
    max_bytes: int,
    first_index: int = 0,
) -> list[bytes]:
    """JSON bytes for every payload, validated against ``model``; the first bad one raises.

    ``first_index`` is the position of ``payloads[0]`` in the caller's batch, for errors.
    """
    if model is not None:
        objects: Sequence[Any] = [
            _validated(model, payload, first_index + offset)
            for offset, payload in enumerate(payloads)
        ]
    else:
        objects = payloads
    try:
        # The common case in one C-level pass; the checks below rescan only on suspicion.
        encoded = list(map(orjson.dumps, objects))
    except (TypeError, orjson.JSONEncodeError):
        encoded = [encode_json(obj, index=first_index + i) for i, obj in enumerate(objects)]
    joined = b"\x00".join(encoded)
    if b"null" in joined or _NUL_ESCAPE in joined:
        for offset, obj in enumerate(objects):
            encode_json(obj, index=first_index + offset)
    if encoded and max(map(len, encoded)) > max_bytes:
        offset, size = next((i, len(d)) for i, d in enumerate(encoded) if len(d) > max_bytes)
        index = first_index + offset
        raise errors.PayloadTooLarge(
            f"payload at index {index} is {size} bytes, above the limit of {max_bytes} bytes",
            index=index,
            size=size,
            limit=max_bytes,
        )
    return encoded


def _validated(model: type[pydantic.BaseModel], payload: Any, index: int) -> Any:
    """The payload as the JSON-ready dict of a valid model instance."""
    try:
        instance = payload if isinstance(payload, model) else model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, index) from None
    return instance.model_dump(mode="json")


def decode_payload(value: Any, model: type[pydantic.BaseModel] | None) -> Any:
    """A payload as stored (already parsed from jsonb) as the caller wants it."""
    if model is None:
        return value
    return model.model_validate(value)
