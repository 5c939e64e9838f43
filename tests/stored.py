"""Messages still in a queue as the tests read them straight from the schema: stored one per
row in ``message``, or in packs in ``message_pack`` (migration 0005)."""

from __future__ import annotations

from psycopg import sql


def stored_messages(schema: str) -> sql.Composed:
    """A subquery of every message still in any queue of ``schema``, one row each: ``(id,
    queue_id, visible_at, attempts, lease_token, payload)``; use it as a table (``FROM {} AS
    m``)."""
    return sql.SQL(
        "(SELECT id, queue_id, visible_at, attempts, lease_token, payload FROM {message}"
        " UNION ALL"
        " SELECT e.id, p.queue_id, p.visible_at, p.attempts, p.lease_token, e.payload"
        " FROM {pack} p"
        " CROSS JOIN LATERAL ROWS FROM (unnest(p.ids), jsonb_array_elements(p.payloads))"
        " AS e(id, payload))"
    ).format(message=sql.Identifier(schema, "message"), pack=sql.Identifier(schema, "message_pack"))
