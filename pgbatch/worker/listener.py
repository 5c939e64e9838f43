"""Wake-ups: LISTEN on a dedicated connection, with jittered polling as the fallback.

Enqueues notify the schema's channel once per transaction with the queue's name; the
listener turns each notification into a wake-up of that queue. The connection is the
listener's own (never a pooled one), reconnects with backoff when it is lost, and wakes
every queue after reconnecting (notifications sent meanwhile are gone). Polling catches what
no notification announces (delayed messages and retries coming due) and covers the time
the listener is down, when it polls faster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgbatch.db import translate
from pgbatch.dsn import describe_dsn
from pgbatch.worker.backoff import Backoff, jittered
from pgbatch.worker.wakeups import Wakeups

log = logging.getLogger("pgbatch.worker.listener")

POLL_SECONDS = 1.0
POLL_SECONDS_WITHOUT_LISTENER = 0.25
# TCP keepalives so that a server that vanished without closing the socket is noticed.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class Listener:
    def __init__(self, dsn: str, channel: str, application_name: str, wakeups: Wakeups) -> None:
        self.dsn = dsn
        self.channel = channel
        self.application_name = application_name
        self.wakeups = wakeups
        self.connected = False
        self.backoff = Backoff(initial=0.1, maximum=10.0)

    async def run(self) -> None:
        while True:
            try:
                await self.listen()
            except (psycopg.Error, OSError) as exc:
                self.connected = False
                delay = self.backoff.next_delay()
                log.warning(
                    "listener connection lost, polling until it is back (retry in %.1fs): %s",
                    delay,
                    self.describe(exc),
                )
                await asyncio.sleep(delay)

    async def listen(self) -> None:
        conninfo = make_conninfo(self.dsn, application_name=self.application_name, **KEEPALIVES)
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            if self.backoff.failures:
                log.info("listener reconnected")
            self.connected = True
            self.backoff.reset()
            self.wakeups.signal_all()
            async for notification in conn.notifies():
                self.wakeups.signal(notification.payload)
        raise psycopg.OperationalError("the notification stream ended")

    def describe(self, exc: BaseException) -> Any:
        if isinstance(exc, psycopg.Error):
            return translate(exc, describe_dsn(self.dsn))
        return exc


async def poll(wakeups: Wakeups, listener: Listener | None) -> None:
    """Marks every queue ready now and then, more often while the listener is down."""
    while True:
        healthy = listener is None or listener.connected
        await asyncio.sleep(jittered(POLL_SECONDS if healthy else POLL_SECONDS_WITHOUT_LISTENER))
        wakeups.signal_all()
