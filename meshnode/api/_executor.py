"""Where the API's blocking work runs: a few threads of its own, never the node's event loop.

The event loop runs SWIM, the period loop and every RPC's bookkeeping, so a store query or an analysis on it
would stall all of them; the loop's default executor runs the sensor polls, so API readers there would delay
them. ``ApiExecutor`` is a fixed number of worker threads fed by one queue: the work in flight is bounded by
the workers, the work waiting by the server's ``maximum_concurrent_rpcs`` (each call waits for at most a few
jobs at a time). The node has two: one for queries and streams, one thread for ``Status`` alone, so that a
queue of heavy queries never delays the one call that tells an operator the node is alive.

Workers are daemon threads: a query still running at shutdown (bounded by its deadline) never holds the
process past SIGTERM; the node flushes its period on the loop and exits without waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

_Job = tuple["asyncio.AbstractEventLoop | None", "asyncio.Future[Any] | None", Callable[..., Any], tuple[Any, ...]]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the caller went away (cancelled): nobody reads the result
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ApiExecutor:
    """``workers`` daemon threads named ``name``-N, started on first use; ``close`` ends them."""

    def __init__(self, workers: int = 4, name: str = "meshnode-api") -> None:
        if workers < 1:
            raise ValueError("an executor needs at least one worker")
        self.workers = workers
        self.name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self.busy = 0
        """Jobs running now (read for metrics and tests; updated by the workers)."""

    def _ensure_started(self) -> None:
        if len(self._threads) == self.workers:
            return
        with self._lock:
            while len(self._threads) < self.workers:
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            loop, fut, fn, args = job
            if fut is not None and fut.cancelled():
                continue
            self.busy += 1
            try:
                result: Any = fn(*args)
                ok = True
            except BaseException as exc:  # handed to the caller
                result, ok = exc, False
            finally:
                self.busy -= 1
            if fut is None and not ok:
                log.warning("%s: background job %r failed: %r", self.name, fn, result)
            if fut is not None and loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
                    loop.call_soon_threadsafe(_settle, fut, ok, result)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker; cancelling the caller skips it when it has not started yet.

        Raises ``RuntimeError`` after ``close``.
        """
        if self._closed:
            raise RuntimeError(f"the {self.name} executor is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ensure_started()
        self._queue.put((loop, fut, fn, args))
        return await fut

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` in a worker, nobody waiting (e.g. closing a stream's snapshot); inline once closed."""
        if self._closed:
            fn(*args)
            return
        self._ensure_started()
        self._queue.put((None, None, fn, args))

    def close(self) -> None:
        """No new work; each worker ends after the job it runs (queued jobs still run first)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
