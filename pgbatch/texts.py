"""The plain texts stored beside payloads: dedup keys (checked) and error texts (made storable).

PostgreSQL ``text`` cannot hold the NUL character, and UTF-8 cannot encode an unpaired
surrogate, so either would make the statement fail. The two texts are treated differently
because they come from different places:

- A dedup key is the caller's data and part of an index: one that cannot be stored exactly
  (not a str, NUL, unpaired surrogate, above ``MAX_DEDUP_KEY_BYTES``) is refused with
  InvalidArgument before anything is written; every other key is stored byte for byte.
- An error text is a diagnostic, often an exception's message, and failing a message must not
  itself fail: NUL and unpaired surrogates become U+FFFD, and a text above
  ``MAX_ERROR_TEXT_CHARS`` is cut there with a note of its full length. Every other text is
  stored byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pgbatch import errors

__all__ = ["MAX_DEDUP_KEY_BYTES", "MAX_ERROR_TEXT_CHARS", "check_dedup_keys", "storable_error"]

# Well under the btree limit (about 2,700 bytes per index entry) of message_dedup_idx.
MAX_DEDUP_KEY_BYTES = 1024
# Room for a full traceback; beyond it a runaway error would bloat the hot table.
MAX_ERROR_TEXT_CHARS = 16384
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def check_dedup_keys(keys: Sequence[object]) -> None:
    """InvalidArgument, naming the index, for the first key that cannot be stored exactly."""
    for index, key in enumerate(keys):
        if key is None:
            continue
        if not isinstance(key, str):
            raise errors.InvalidArgument(
                f"dedup key at index {index} must be a str or None, got {type(key).__name__}"
            )
        problem = _dedup_key_problem(key)
        if problem:
            raise errors.InvalidArgument(f"dedup key at index {index} {problem}")


def _dedup_key_problem(key: str) -> str | None:
    if "\x00" in key:
        return "contains a NUL character, which PostgreSQL text cannot store"
    if _UNSTORABLE.search(key):
        return "contains an unpaired surrogate, which is not valid Unicode"
    size = len(key.encode())
    if size > MAX_DEDUP_KEY_BYTES:
        return f"is {size} bytes, above the limit of {MAX_DEDUP_KEY_BYTES} bytes"
    return None


def storable_error(text: str) -> str:
    """The error text as it will be stored: unchanged unless it holds what text cannot."""
    if len(text) > MAX_ERROR_TEXT_CHARS:
        text = f"{text[:MAX_ERROR_TEXT_CHARS]}… [truncated: {len(text)} characters in all]"
    return _UNSTORABLE.sub(_REPLACEMENT, text)
