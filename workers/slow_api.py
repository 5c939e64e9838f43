"""The .NET seed scenario: every entry needs a third-party call that takes 200 ms.

The example starts its own small HTTP service on 127.0.0.1 (stdlib asyncio, in a child
process, answering each request after 200 ms), enqueues the entries, and runs a worker whose
async batch handler calls the service for every entry of its batch concurrently, keeping
each answer with its message (``batch.complete``). An entry whose call fails fails alone;
the rest of its batch is archived. The worker runs in this process, started once and idle
until the enqueue wakes it; the example prints the wall time from enqueue to drained.

    python workers/slow_api.py                          # 1,000 and 10,000 entries
    python workers/slow_api.py --sizes 1000,10000,20000 --dsn postgresql://...
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.process
import resource
import socket
import time
from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import sql

import pgbatch

SCHEMA = "pgbatch_examples"
QUEUE = "score_lookups"
CALL_SECONDS = 0.2
# Connections kept to the service (each carries many pipelined calls at once).
CONNECTIONS = 16

app = pgbatch.App(schema=SCHEMA)


# --- the third-party service ------------------------------------------------------------------


class SlowService(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: each request is answered CALL_SECONDS after it arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            asyncio.get_running_loop().call_later(CALL_SECONDS, self.respond, path)

    def respond(self, path: bytes) -> None:
        if not self.transport.is_closing():
            body = orjson.dumps({"path": path.decode(), "score": len(path) % 7})
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )


def serve(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            SlowService, sock=sock, backlog=4096
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_service() -> tuple[multiprocessing.process.BaseProcess, int]:
    """The service in a process of its own, as a third party would be."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    process = multiprocessing.get_context("fork").Process(target=serve, args=(sock,), daemon=True)
    process.start()
    return process, int(sock.getsockname()[1])


# --- the client the handler uses ---------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive connection to the service; requests are pipelined (HTTP/1.1 answers
    them in order), so a few connections carry thousands of calls in flight."""

    def __init__(self) -> None:
        self.buffer = b""
        self.replies: collections.deque[asyncio.Future[bytes]] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (head_end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:head_end].lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
            self.replies.popleft().set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.replies:
            self.replies.popleft().set_exception(ConnectionError("the service went away"))

    def get(self, path: str) -> asyncio.Future[bytes]:
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
        return reply


class ServiceClient:
    """CONNECTIONS keep-alive connections to the service, used in turn."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[Connection] = []
        self.turn = itertools.count()
        self.opening = asyncio.Lock()

    async def get(self, path: str) -> Any:
        if len(self.connections) < CONNECTIONS:
            await self.open()
        conn = self.connections[next(self.turn) % len(self.connections)]
        return orjson.loads(await conn.get(path))

    async def open(self) -> None:
        async with self.opening:
            loop = asyncio.get_running_loop()
            while len(self.connections) < CONNECTIONS:
                _, conn = await loop.create_connection(Connection, "127.0.0.1", self.port)
                self.connections.append(conn)


service: ServiceClient | None = None
handled = 0  # messages through the handler so far (the run waits on it, not on the database)


@app.batch_handler(QUEUE, batch_size=1000, lease_seconds=60)
async def score(batch: pgbatch.Batch[dict[str, int]]) -> None:
    """All calls of the batch at once; each answer kept with its message."""
    assert service is not None, "start the service first"

    async def call(msg: pgbatch.Message[dict[str, int]]) -> None:
        try:
            batch.complete(msg, await service.get(f"/score?user={msg.payload['user_id']}"))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            batch.fail(msg, exc)  # this entry only; the others go on

    await asyncio.gather(*(call(m) for m in batch))
    global handled
    handled += len(batch)


# --- the run ---------------------------------------------------------------------------------


async def wait_drained(client: pgbatch.AsyncClient, queue_id: int, target: int) -> None:
    """Until the handler has seen ``target`` messages, then until the last archive is in
    (a count of the queue's rows still in the hot table: cheap, unlike full stats)."""
    while handled < target:
        await asyncio.sleep(0.002)
    left = sql.SQL("SELECT count(*) FROM {} WHERE queue_id = %s").format(
        sql.Identifier(SCHEMA, "message")
    )
    async with client.db.connection() as conn:
        while (await (await conn.execute(left, (queue_id,))).fetchone() or [0])[0]:
            await asyncio.sleep(0.002)


async def run_size(
    client: pgbatch.AsyncClient, queue: pgbatch.AsyncQueue[Any], entries: int
) -> float:
    """Enqueue to drained, with the worker already running (idle, woken by the enqueue)."""
    target = handled + entries
    started = time.perf_counter()
    await queue.batch_enqueue([{"user_id": i} for i in range(entries)])
    await wait_drained(client, queue.info.id, target)
    return time.perf_counter() - started


async def main_async(dsn: str | None, sizes: Sequence[int]) -> None:
    global service
    process, port = start_service()
    try:
        service = ServiceClient(port)
        async with pgbatch.connect_async(dsn, schema=SCHEMA) as client:
            app.dsn = client.dsn
            await client.migrate()
            queue = await client.create_queue(QUEUE, lease_seconds=60)
            await queue.purge()
            worker = asyncio.create_task(app.run_worker_async([QUEUE], concurrency=32))
            await asyncio.sleep(1.0)  # started and idle
            for entries in sizes:
                seconds = await run_size(client, queue, entries)
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(
                    f"{entries:>7,} entries x {CALL_SECONDS * 1000:.0f} ms calls: {seconds:6.2f} s"
                    f"  (peak RSS of the worker process {rss:.0f} MB)"
                )
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    finally:
        process.terminate()
        process.join(5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=None, help="default: $PGBATCH_DSN, $DATABASE_URL, embedded"
    )
    parser.add_argument("--sizes", default="1000,10000", help="numbers of entries, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args.dsn, [int(s) for s in args.sizes.split(",")]))


if __name__ == "__main__":
    main()
