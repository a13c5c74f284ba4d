"""The bus lock: urgent acquirers go ahead of every waiting normal one, the holder finishes
first, first come first served within each queue, and cancellation never loses the lock."""

from __future__ import annotations

import asyncio

import pytest

from drivers.transports.priority_lock import PriorityLock


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _worker(lock: PriorityLock, name: str, order: list[str], *, urgent: bool) -> None:
    async with lock.hold(urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def test_urgent_goes_ahead_of_queued_normal_waiters() -> None:
    lock = PriorityLock()
    order: list[str] = []
    await lock.acquire()  # the request in flight
    tasks = [asyncio.create_task(_worker(lock, f"poll{n}", order, urgent=False)) for n in range(5)]
    await _settle()
    assert lock.waiting == (0, 5)
    tasks += [asyncio.create_task(_worker(lock, "urgent1", order, urgent=True))]
    tasks += [asyncio.create_task(_worker(lock, "urgent2", order, urgent=True))]
    await _settle()
    assert lock.waiting == (2, 5)
    order.append("in flight done")
    lock.release()
    await asyncio.gather(*tasks)
    assert order == [
        "in flight done", "urgent1", "urgent2", "poll0", "poll1", "poll2", "poll3", "poll4",
    ]
    assert not lock.locked()


async def test_free_lock_is_taken_at_once() -> None:
    lock = PriorityLock()
    await lock.acquire(urgent=False)
    assert lock.locked()
    lock.release()
    assert not lock.locked()


async def test_release_unheld_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        PriorityLock().release()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    lock = PriorityLock()
    await lock.acquire()
    waiter = asyncio.create_task(lock.acquire(urgent=True))
    await _settle()
    waiter.cancel()
    await _settle()
    assert lock.waiting == (0, 0)
    lock.release()
    assert not lock.locked()


async def test_waiter_cancelled_after_the_handover_passes_the_lock_on() -> None:
    lock = PriorityLock()
    order: list[str] = []
    await lock.acquire()
    first = asyncio.create_task(lock.acquire())
    second = asyncio.create_task(_worker(lock, "second", order, urgent=False))
    await _settle()
    lock.release()  # handed to `first`, which is cancelled before it runs
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1.0)
    assert order == ["second"]
    assert not lock.locked()


async def test_an_exception_in_the_holder_releases() -> None:
    lock = PriorityLock()
    with pytest.raises(ValueError):
        async with lock.hold(urgent=True):
            raise ValueError("boom")
    assert not lock.locked()


async def test_try_acquire_takes_only_a_free_lock_nobody_waits_for() -> None:
    lock = PriorityLock()
    assert lock.try_acquire()
    assert lock.locked()
    assert not lock.try_acquire()  # held
    waiter = asyncio.create_task(lock.acquire())
    await _settle()
    lock.release()  # handed to the waiter, not freed
    await waiter
    assert not lock.try_acquire()
    queued = asyncio.create_task(lock.acquire(urgent=True))
    await _settle()
    assert not lock.try_acquire()  # a newcomer never jumps the queue
    lock.release()
    await queued
    lock.release()
    assert not lock.locked()
    assert lock.try_acquire()


async def test_a_reserved_claim_is_queued_at_once_and_holds_back_the_rest() -> None:
    """``reserve``: an urgent place in the queue taken without waiting (an urgent write that
    goes out on another link meanwhile); handed over, it keeps the lock until withdrawn."""
    lock = PriorityLock()
    order: list[str] = []
    await lock.acquire()  # the read in flight
    poll = asyncio.create_task(_worker(lock, "poll", order, urgent=False))
    await _settle()
    claim = lock.reserve()
    later = asyncio.create_task(_worker(lock, "urgent later", order, urgent=True))
    await _settle()
    assert not claim.done() and lock.waiting == (2, 1)
    lock.release()  # the read answered: the lock goes to the claim, first in the queue
    await _settle()
    assert claim.done() and order == []
    order.append("claim withdrawn")
    lock.withdraw(claim)
    await asyncio.gather(poll, later)
    assert order == ["claim withdrawn", "urgent later", "poll"]
    assert not lock.locked()


async def test_a_claim_withdrawn_before_its_turn_leaves_the_queue() -> None:
    lock = PriorityLock()
    await lock.acquire()
    claim = lock.reserve()
    assert lock.waiting == (1, 0)
    lock.withdraw(claim)
    assert lock.waiting == (0, 0) and claim.cancelled()
    lock.release()
    assert not lock.locked()


async def test_a_claim_on_a_free_lock_holds_it_at_once() -> None:
    lock = PriorityLock()
    claim = lock.reserve()
    assert claim.done() and lock.locked()
    lock.withdraw(claim)
    assert not lock.locked()
