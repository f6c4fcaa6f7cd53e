"""Generation jobs: one worker thread runs them one at a time, off the event loop; the others wait in a queue.

A `Job` carries one request's events from the worker thread to the request's event stream (an asyncio
queue on the server's loop, fed with `call_soon_threadsafe`). A job is cancelled by `POST /api/cancel`
(reason "stopped": the take is finished with what was generated so far) or by its client going away
(reason "disconnected": the worker drops it at its next step). One worker is enough: generation keeps a
CPU core busy, and two batches side by side would each run at half speed; a queued job is told its place.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import traceback
from collections import OrderedDict, deque
from typing import Any, Callable

Event = tuple[str, dict[str, Any]]  # (SSE event name, its JSON data)
KEPT_JOBS = 200  # finished jobs remembered (for /api/cancel answers and the tests)


class Job:
    """One generation request: its settings, its cancel flag and the queue its events travel through."""

    def __init__(self, request: Any, loop: asyncio.AbstractEventLoop):
        self.id = secrets.token_hex(6)
        self.request = request
        self.state = "queued"  # queued -> running -> finished
        self.outcome: str | None = None  # done | stopped | error | disconnected | cancelled
        self.cancel_reason: str | None = None
        self._cancel = threading.Event()
        self._loop = loop
        self._events: asyncio.Queue[list[Event] | None] = asyncio.Queue()

    @property
    def cancelled(self) -> bool:
        """Whether the job was asked to stop (checked by the worker between steps)."""
        return self._cancel.is_set()

    def cancel(self, reason: str) -> None:
        """Ask the job to stop; the first reason given stands."""
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()

    def send(self, events: list[Event]) -> None:
        """Hand events to the stream (from any thread); dropped once the client is gone."""
        if events and self.cancel_reason != "disconnected":
            self._put(events)

    def close(self) -> None:
        """End the stream (from any thread)."""
        self._put(None)

    def _put(self, item: list[Event] | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the server's loop is closed: nobody is listening
            pass

    async def events(self) -> list[Event] | None:
        """The next batch of events, or None at the end of the stream."""
        return await self._events.get()


class Worker:
    """Runs jobs one at a time in a daemon thread, first come first served."""

    def __init__(self, run: Callable[[Job], str], discard: Callable[[Job], None] | None = None):
        self._run = run  # runs one job to its end; returns its outcome
        self._discard = discard  # forgets a job that never ran (its upload): cancelled or disconnected while queued
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.current: Job | None = None
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._thread = threading.Thread(target=self._loop, name="musicgpt-studio-worker", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.current is not None

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return len(self._queue)

    def submit(self, job: Job) -> int:
        """Queue a job; returns how many jobs are ahead of it (0: it starts now)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("the studio is shutting down")
            ahead = len(self._queue) + (self.current is not None)
            self._queue.append(job)
            self.jobs[job.id] = job
            while len(self.jobs) > KEPT_JOBS:
                self.jobs.popitem(last=False)
            self._cond.notify()
        return ahead

    def cancel(self, job: Job, reason: str) -> None:
        """Stop a job: a queued one is taken off the queue and ends at once, a running one at its next step."""
        with self._cond:
            waiting = job in self._queue
            if waiting:
                self._queue.remove(job)
        job.cancel(reason)
        if waiting:
            if self._discard is not None:
                self._discard(job)
            job.state, job.outcome = "finished", "cancelled" if reason != "disconnected" else reason
            job.send([("done", {"job": job.id, "stopped": True, "samples": [],
                                "message": "stopped before it started"})])
            job.close()
            self._tell_places()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job and end the thread."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._cond.notify_all()
        for job in pending:
            self.cancel(job, "stopped")
        if self.current is not None:
            self.current.cancel("stopped")
        self._thread.join(timeout)

    def _tell_places(self) -> None:
        """Tell each queued job how many jobs are ahead of it."""
        with self._cond:
            waiting = list(self._queue)
        for place, job in enumerate(waiting, start=1):
            job.send([("progress", {"job": job.id, "state": "queued", "ahead": place})])

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self.current, job.state = job, "running"
            self._tell_places()
            try:
                job.outcome = self._run(job)
            except Exception as exc:  # a bug must cost one job, not the worker (the runner reports user errors)
                traceback.print_exc()
                job.outcome = "error"
                job.send([("error", {"job": job.id, "message": f"internal error: {type(exc).__name__}: {exc}"})])
            finally:
                with self._cond:  # idle before the stream ends: a client that saw its end finds the worker free
                    self.current = None
                job.state = "finished"
                job.close()
