"""The id reservoir: blocks of the sequence handed out in order, never twice."""

from __future__ import annotations

import os
import threading

from pgbatch.ids import ID_BLOCK, IdReservoir


def test_take_needs_enough_ids_and_takes_nothing_otherwise() -> None:
    reservoir = IdReservoir()
    assert reservoir.take(1) is None
    reservoir.add_blocks([5 * ID_BLOCK + 1, 1])
    assert reservoir.take(2 * ID_BLOCK + 1) is None
    first = reservoir.take(ID_BLOCK + 10)
    assert first == list(range(1, ID_BLOCK + 1)) + list(range(5 * ID_BLOCK + 1, 5 * ID_BLOCK + 11))
    assert reservoir.take(ID_BLOCK) is None
    assert reservoir.take(ID_BLOCK - 10) == list(range(5 * ID_BLOCK + 11, 6 * ID_BLOCK + 1))
    assert reservoir.take(1) is None


def test_threads_never_share_an_id() -> None:
    reservoir = IdReservoir()
    reservoir.add_blocks(range(1, 64 * ID_BLOCK, ID_BLOCK))
    taken: list[list[int]] = []

    def take() -> None:
        for _ in range(200):
            ids = reservoir.take(37)
            assert ids is not None
            taken.append(ids)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids in taken for i in ids]
    assert len(every) == len(set(every)) == 8 * 200 * 37


def test_a_forked_child_does_not_reuse_the_parents_ids() -> None:
    reservoir = IdReservoir()
    reservoir.add_blocks([1])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its reservoir must be empty
        os.write(write, b"empty" if reservoir.take(1) is None else b"reused")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"empty"
    assert reservoir.take(1) == [1]


def test_blocks_to_reserve_covers_the_request_and_spares() -> None:
    assert IdReservoir.blocks_to_reserve(1) >= 1
    assert IdReservoir.blocks_to_reserve(ID_BLOCK * 3 + 1) * ID_BLOCK >= ID_BLOCK * 3 + 1
