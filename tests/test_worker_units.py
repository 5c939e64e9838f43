"""The worker's pure parts: batch outcomes, adaptive sizing, wake-up bookkeeping, app loading."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import pgbatch
from pgbatch import errors
from pgbatch.worker.adaptive import AdaptiveBatchSize, FixedBatchSize, batch_sizer
from pgbatch.worker.batch import Batch, error_text
from pgbatch.worker.execute import split_budget
from pgbatch.worker.loader import load_app
from pgbatch.worker.wakeups import Wakeups


def message(mid: int) -> pgbatch.Message[Any]:
    now = datetime.now(UTC)
    return pgbatch.Message(mid, {"n": mid}, 1, now, now, 7)


# --- Batch ----------------------------------------------------------------------------------


def test_an_untouched_batch_archives_everything_without_results():
    msgs = [message(i) for i in range(3)]
    outcome = Batch(msgs, "q").outcome()
    assert outcome.archive is msgs and outcome.results is None and outcome.failures == []


def test_fail_and_complete_give_per_message_outcomes_last_call_wins():
    msgs = [message(i) for i in range(4)]
    batch = Batch(msgs, "q")
    batch.fail(msgs[0], "nope", delay=5)
    batch.fail(msgs[1], ValueError("bad value"))
    batch.complete(msgs[2], {"ok": True})
    batch.fail(msgs[3], "first")
    batch.complete(msgs[3], [1, 2])
    outcome = batch.outcome()
    assert [m.id for m in outcome.archive] == [2, 3]
    assert outcome.results == [{"ok": True}, [1, 2]]
    assert [(f.message.id, f.error, f.delay) for f in outcome.failures] == [
        (0, "nope", 5.0),
        (1, "ValueError: bad value", None),
    ]


def test_batch_refuses_foreign_messages_bad_results_and_bad_delays():
    batch = Batch([message(1)], "q")
    with pytest.raises(errors.InvalidArgument, match="not a message of this batch"):
        batch.fail(message(2), "x")
    with pytest.raises(errors.PayloadNotJSON):
        batch.complete(batch.messages[0], {1, 2})
    with pytest.raises(errors.InvalidArgument, match="delay"):
        batch.fail(batch.messages[0], "x", delay=-1)
    with pytest.raises(errors.InvalidArgument, match="str or an exception"):
        batch.fail(batch.messages[0], 42)  # type: ignore[arg-type]
    assert len(batch) == 1 and list(batch) == batch.messages


def test_error_text_names_the_exception_type():
    assert error_text(KeyError("k")) == "KeyError: 'k'"
    assert error_text(RuntimeError()) == "RuntimeError"
    assert error_text("plain") == "plain"


def test_split_budget_corners_about_two_poisons_in_log_time():
    assert split_budget(100) == 28  # 2 * log2(100) rounded up = 14 calls per poison
    assert split_budget(1) == 4


# --- adaptive batch size ---------------------------------------------------------------------


def test_adaptive_size_grows_on_fast_full_batches_up_to_the_bound():
    sizer = AdaptiveBatchSize(100, 10, 1000, 1.0)
    sizer.observe(100, 0.1)
    assert sizer.size == 150
    sizer.observe(40, 0.01)  # a partial batch says nothing about a larger one
    assert sizer.size == 150
    for _ in range(20):
        sizer.observe(sizer.size, 0.1)
    assert sizer.size == 1000


def test_adaptive_size_shrinks_on_slow_batches_down_to_the_bound():
    sizer = AdaptiveBatchSize(400, 10, 1000, 1.0)
    sizer.observe(400, 1.2)  # a little over: towards the size that meets the target
    assert sizer.size == 266
    sizer.observe(266, 10.0)  # far over: at most halve at once
    assert sizer.size == 133
    sizer.observe(133, 0.7)  # between half and the whole target: keep
    assert sizer.size == 133
    for _ in range(20):
        sizer.observe(sizer.size, 10.0)
    assert sizer.size == 10


def test_batch_size_settings_are_checked():
    assert isinstance(batch_sizer("auto"), AdaptiveBatchSize)
    assert batch_sizer(7) == FixedBatchSize(7)
    for bad in (0, -1, True, "big", 2.5):
        with pytest.raises(errors.InvalidArgument):
            batch_sizer(bad)  # type: ignore[arg-type]


# --- wake-ups ---------------------------------------------------------------------------------


def test_a_fetch_that_started_before_a_signal_cannot_mark_the_queue_empty():
    wakeups = Wakeups(["a", "b"])
    before = wakeups.generation("a")
    wakeups.signal("a")  # e.g. a NOTIFY arriving while the fetch ran
    wakeups.mark_empty("a", before)
    assert wakeups.is_ready("a")
    wakeups.mark_empty("a", wakeups.generation("a"))
    assert not wakeups.is_ready("a") and wakeups.pick("a") == "b"
    wakeups.signal("unknown queue")  # other queues of the schema are ignored
    assert wakeups.any_ready()


def test_idle_lanes_look_into_a_queue_one_at_a_time_until_full_batches_come_back():
    wakeups = Wakeups(["a"])
    assert wakeups.claim_idle(0) == "a"
    assert wakeups.claim_idle(1) is None  # a small batch is not split between idle lanes
    wakeups.unclaim("a", found_full_batch=True)  # a backlog: two may look now, then four
    assert [wakeups.claim_idle(i) for i in range(3)] == ["a", "a", None]
    wakeups.unclaim("a", found_full_batch=True)
    assert [wakeups.claim_idle(i) for i in range(4)] == ["a", "a", "a", None]
    wakeups.unclaim("a", found_full_batch=False)  # the backlog is gone: back to one
    for _ in range(3):
        wakeups.unclaim("a", found_full_batch=False)
    assert [wakeups.claim_idle(i) for i in range(2)] == ["a", None]


async def test_a_signal_wakes_one_waiting_lane():
    wakeups = Wakeups(["a"])
    woken: list[int] = []

    async def lane(n: int) -> None:
        await wakeups.wait(None)
        woken.append(n)

    tasks = [asyncio.create_task(lane(n)) for n in range(3)]
    await asyncio.sleep(0)
    wakeups.signal("a")
    await asyncio.sleep(0.01)
    assert woken == [0]
    wakeups.wake_all()
    await asyncio.gather(*tasks)
    assert sorted(woken) == [0, 1, 2]
    await asyncio.wait_for(wakeups.wait(0.01), 1)  # a timeout returns


# --- loading the app ---------------------------------------------------------------------------


def test_load_app_finds_the_app_and_explains_bad_paths(tmp_path: Path, monkeypatch):
    (tmp_path / "myworkers.py").write_text(
        "import pgbatch\napp = pgbatch.App()\nnot_an_app = 3\nclass Holder:\n    app = app\n"
    )
    (tmp_path / "brokenworkers.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_app("myworkers:app"), pgbatch.App)
    assert load_app("myworkers:Holder.app") is load_app("myworkers:app")
    cases = {
        "myworkers": "expected 'package.module:attribute'",
        "myworkers:app; import os": "expected 'package.module:attribute'",
        "nowhere_xyz.tasks:app": "no module named 'nowhere_xyz'",
        "myworkers:missing": "has no attribute 'missing'",
        "myworkers:not_an_app": "is a int, not a pgbatch.App",
    }
    for path, reason in cases.items():
        with pytest.raises(errors.ConfigurationError, match=reason):
            load_app(path)
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_app("brokenworkers:app")  # the user's own import error, unchanged


def test_the_default_lock_timeout_yields_to_one_in_the_dsn_and_to_an_explicit_choice() -> None:
    from pgbatch.worker.app import DEFAULT_LOCK_TIMEOUT

    plain = "postgresql://u@127.0.0.1:5432/db"
    with_option = "postgresql://u@127.0.0.1:5432/db?options=-c%20lock_timeout%3D200"
    assert pgbatch.App(plain).lock_timeout_for(plain) == DEFAULT_LOCK_TIMEOUT
    assert pgbatch.App(with_option).lock_timeout_for(with_option) is None
    assert pgbatch.App(plain, lock_timeout=None).lock_timeout_for(plain) is None
    assert pgbatch.App(plain, lock_timeout=1.5).lock_timeout_for(with_option) == 1.5
