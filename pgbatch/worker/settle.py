"""Turning a batch's outcome into statements, and their answers into counts and log lines.

One archive statement for every message to archive, one fail statement per distinct retry
delay (usually one); both fenced by lease token, so a message whose lease was lost is
neither archived nor failed by this worker, and counts as a lease loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pgbatch import operations as ops
from pgbatch.models import FailOutcome
from pgbatch.queries import Queries
from pgbatch.worker.batch import Failure, Outcome, Settlement
from pgbatch.worker.context import QueueRuntime

log = logging.getLogger("pgbatch.worker")


def failure_groups(failures: Sequence[Failure]) -> dict[float | None, list[Failure]]:
    groups: dict[float | None, list[Failure]] = {}
    for failure in failures:
        groups.setdefault(failure.delay, []).append(failure)
    return groups


def settle_plans(q: Queries, queue: QueueRuntime, outcome: Outcome) -> list[ops.Plan[Any]]:
    """The archive plan (if any message succeeded), then one fail plan per delay."""
    plans: list[ops.Plan[Any]] = []
    if outcome.archive:
        plans.append(ops.archive_many(q, queue.target, outcome.archive, outcome.results))
    for delay, group in failure_groups(outcome.failures).items():
        plans.append(
            ops.fail_many(
                q,
                queue.target,
                [f.message for f in group],
                [f.error for f in group],
                delay=delay,
            )
        )
    return plans


def settlement(queue: QueueRuntime, outcome: Outcome, answers: Sequence[Any]) -> Settlement:
    """Counts from the answers of settle_plans (in their order), logging failures and losses."""
    done = Settlement()
    done.add(outcome.settled)
    position = 0
    if outcome.archive:
        archived: list[int] = answers[0]
        position = 1
        done.archived += len(archived)
        if len(archived) < len(outcome.archive):
            log_lost(queue, outcome.archive, set(archived), "archived")
            done.lost += len(outcome.archive) - len(archived)
    for group in failure_groups(outcome.failures).values():
        fates: FailOutcome = answers[position]
        position += 1
        done.retried += len(fates.retried)
        done.dead += len(fates.dead)
        log_failures(queue, group, fates)
        settled = len(fates.retried) + len(fates.dead)
        if settled < len(group):
            log_lost(queue, [f.message for f in group], {*fates.retried, *fates.dead}, "failed")
            done.lost += len(group) - settled
    return done


def log_failures(queue: QueueRuntime, group: Sequence[Failure], fates: FailOutcome) -> None:
    dead, retried = set(fates.dead), set(fates.retried)
    for failure in group:
        message = failure.message
        if message.id in dead:
            log.warning(
                "queue %s: message %d dead-lettered after %d attempts: %s",
                queue.name,
                message.id,
                message.attempts,
                failure.error,
            )
        elif message.id in retried:
            log.warning(
                "queue %s: message %d failed (attempt %d), will retry: %s",
                queue.name,
                message.id,
                message.attempts,
                failure.error,
            )


def log_lost(queue: QueueRuntime, messages: Sequence[Any], kept: set[int], verb: str) -> None:
    lost = [m.id for m in messages if m.id not in kept]
    log.warning(
        "queue %s: lease lost on %d message(s), not %s by this worker: ids %s",
        queue.name,
        len(lost),
        verb,
        _id_list(lost),
    )


def _id_list(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
