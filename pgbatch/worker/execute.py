"""Runs a handler over one batch, as a pipeline of small steps.

decode payloads (a payload that no longer fits the queue's model fails alone) -> call the
handler (async ones on the event loop, sync ones in the worker's threads) -> on an exception,
split the batch in halves and retry each (poison isolation) -> the outcome to settle.
Transactional handlers settle inside their own transaction, so their writes and the archive
of their batch commit together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pydantic

from pgbatch.db import run_plan, run_plan_async
from pgbatch.models import Message
from pgbatch.worker.batch import Batch, Failure, Outcome, Settlement, error_text
from pgbatch.worker.context import QueueRuntime, RunContext
from pgbatch.worker.settle import settle_plans, settlement

log = logging.getLogger("pgbatch.worker")


class LeaseLostInTransaction(Exception):
    """The archive in a transactional handler's transaction missed messages: roll back."""

    def __init__(self, held: set[int]) -> None:
        super().__init__("lease lost on part of the batch; its transaction was rolled back")
        self.held = held


def split_budget(size: int) -> int:
    """Extra handler calls poison isolation may spend on a batch: enough to corner about two
    poison messages (each costs about 2*log2(size) calls), not to call a failing dependency
    once per message."""
    return 4 * size.bit_length()


def decode(
    messages: list[Message[Any]], model: type[pydantic.BaseModel] | None
) -> tuple[list[Message[Any]], list[Failure]]:
    """Parses payloads into ``model`` in place; the ones that do not fit fail on their own."""
    if model is None:
        return messages, []
    good: list[Message[Any]] = []
    bad: list[Failure] = []
    for message in messages:
        try:
            message.payload = model.model_validate(message.payload)
            good.append(message)
        except pydantic.ValidationError as exc:
            bad.append(Failure(message, f"payload does not fit {model.__name__}: {exc}", None))
    return good, bad


def crash_isolated_groups(messages: list[Message[Any]]) -> list[list[Message[Any]]]:
    """The handler calls to make: a message whose last lease expired unsettled may have
    crashed its worker process (poison isolation cannot catch that), so each such message
    runs alone and a crash costs its batch-mates one attempt, not all of theirs."""
    if len(messages) < 2:
        return [messages] if messages else []
    suspects = [m for m in messages if m.after_expired_lease]
    if not suspects:
        return [messages]
    rest = [m for m in messages if not m.after_expired_lease]
    return ([rest] if rest else []) + [[m] for m in suspects]


class BatchExecutor:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def run(self, queue: QueueRuntime, messages: list[Message[Any]]) -> Outcome:
        good, bad = decode(messages, queue.spec.model)
        outcome = Outcome(failures=bad)
        groups = crash_isolated_groups(good)
        for group in groups:
            budget = [split_budget(len(group)) if queue.spec.split_on_failure else 0]
            result = await self.isolate(queue, group, budget)
            if len(groups) > 1:
                result = await self.settle_now(queue, result)
            outcome = result.merge(outcome)
        return outcome

    async def settle_now(self, queue: QueueRuntime, outcome: Outcome) -> Outcome:
        """Settles one group at once, so that a crash on a later suspect cannot undo it."""
        answers = [
            await self.ctx.db.run(plan, transaction=False)
            for plan in settle_plans(self.ctx.queries, queue, outcome)
        ]
        return Outcome(settled=settlement(queue, outcome, answers))

    async def isolate(
        self, queue: QueueRuntime, messages: list[Message[Any]], budget: list[int]
    ) -> Outcome:
        """Calls the handler; when it raises, retries each half of the batch, recursively."""
        try:
            return await self.attempt(queue, messages)
        except Exception as exc:
            if len(messages) < 2 or budget[0] < 2:
                log.warning(
                    "queue %s: handler failed on %d message(s) (first id %d): %s",
                    queue.name,
                    len(messages),
                    messages[0].id,
                    error_text(exc),
                    exc_info=exc,
                )
                return Outcome.all_failed(messages, error_text(exc))
            budget[0] -= 2
            log.debug(
                "queue %s: handler failed on %d messages (%s); retrying each half",
                queue.name,
                len(messages),
                error_text(exc),
            )
        middle = len(messages) // 2
        first = await self.isolate(queue, messages[:middle], budget)
        return first.merge(await self.isolate(queue, messages[middle:], budget))

    async def attempt(self, queue: QueueRuntime, messages: list[Message[Any]]) -> Outcome:
        """One handler call; raises what the handler raised."""
        spec = queue.spec
        if spec.transactional:
            return await self.attempt_transactional(queue, messages)
        batch: Batch[Any] = Batch(messages, queue.name)
        if spec.is_async:
            await spec.func(batch)
        else:
            await self.in_thread(spec.func, batch)
        return batch.outcome()

    async def in_thread(self, func: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ctx.executor, func, *args)

    async def attempt_transactional(
        self, queue: QueueRuntime, messages: list[Message[Any]]
    ) -> Outcome:
        try:
            if queue.spec.is_async:
                settled = await self.transaction_async(queue, messages)
            else:
                settled = await self.in_thread(self.transaction_sync, queue, messages)
        except LeaseLostInTransaction as lost:
            return self.after_rollback(queue, messages, lost.held)
        return Outcome(settled=settled)

    async def transaction_async(
        self, queue: QueueRuntime, messages: list[Message[Any]]
    ) -> Settlement:
        async with self.ctx.db.connection() as conn, conn.transaction():
            batch: Batch[Any] = Batch(messages, queue.name, conn)
            await queue.spec.func(batch)
            outcome = batch.outcome()
            answers = [
                await run_plan_async(conn, plan)
                for plan in settle_plans(self.ctx.queries, queue, outcome)
            ]
            return settled_or_rollback(queue, outcome, answers)

    def transaction_sync(self, queue: QueueRuntime, messages: list[Message[Any]]) -> Settlement:
        assert self.ctx.sync_db is not None, "sync transactional handlers need the sync pool"
        with self.ctx.sync_db.connection() as conn, conn.transaction():
            batch: Batch[Any] = Batch(messages, queue.name, conn)
            queue.spec.func(batch)
            outcome = batch.outcome()
            answers = [
                run_plan(conn, plan) for plan in settle_plans(self.ctx.queries, queue, outcome)
            ]
            return settled_or_rollback(queue, outcome, answers)

    def after_rollback(
        self, queue: QueueRuntime, messages: Sequence[Message[Any]], held: set[int]
    ) -> Outcome:
        """The ones still held fail (and come back at once); the others count as lost."""
        error = "rolled back: the lease on part of this transactional batch was lost"
        kept = [m for m in messages if m.id in held]
        outcome = Outcome(failures=[Failure(m, error, 0.0) for m in kept])
        outcome.settled.lost = len(messages) - len(kept)
        return outcome


def settled_or_rollback(
    queue: QueueRuntime, outcome: Outcome, answers: Sequence[Any]
) -> Settlement:
    """The settlement, or LeaseLostInTransaction (rolling back) if the archive missed any."""
    if outcome.archive and len(answers[0]) < len(outcome.archive):
        held = set(answers[0])
        for fates in answers[1:]:
            held.update(fates.retried, fates.dead)
        raise LeaseLostInTransaction(held)
    return settlement(queue, outcome, answers)
