"""Early-exit serving engine: one worker thread batches images across requests *and* steps.

Every image waits in the queue of the step it needs next (0 = glance).  Each iteration
runs one batched call of one step on up to ``max_batch`` images of that step's queue; the
images that are confident enough leave, the others move on to the next step's queue with
their state, and a request is answered once all its images have left.  New requests join
the glance queue while others are mid-way, and each request carries its own thresholds
(its budget), applied per image inside a shared batch.

The engine runs any step function (:class:`Steps`): ONNX Runtime's
(:class:`glancefocus.runtime.deploy.OnnxSteps`) or the PyTorch model's
(:class:`glancefocus.inference.TorchSteps`, for CUDA serving).  Its answers are those of
``OnnxGFNet.predict`` / ``GFNet.predict`` on the same images, whatever the arrival order
and batch composition: per-image results depend only on the image and its thresholds.

Scheduling: a step's queue is *ready* when it holds ``max_batch`` images, when its oldest
image has waited ``max_wait_ms``, or (for a focus step) when every earlier queue is empty,
since only earlier steps can add to it.  Among ready queues the ``policy`` picks:
``"deepest"`` (default: the latest step first, which finishes images already mid-way and
frees their slots), ``"oldest"`` (the queue holding the earliest-arrived request) or
``"fullest"`` (the most images).  "deepest" is the default for its p99 at equal throughput:
in the in-process load test (``python -m benchmarks.bench_engine``, one run on a quiet 2-core
CPU, benchmarks/README.md) the three policies saturated within 1 % of each other, and at
25 / 50 / 75 / 90 % of it "deepest" had the lowest p99 at every load (26.6 / 25.6 / 49.9 /
68.8 ms, against 27.2 / 37.9 / 136.5 / 70.9 for "oldest" and 31.8 / 65.7 / 169.7 / 95.5 for
"fullest").

Memory is bounded: at most ``max_queued`` images are admitted and unanswered at once; a
request that does not fit is refused with :class:`QueueFull`, never buffered (a server
reserves room before decoding a request).  No request stops the engine: a cancelled future
drops its images wherever they wait, a failing step fails its batch's requests only, and if
the worker still dies, every request fails at once with :class:`EngineFailed` and
``on_death`` is told.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .deploy import OnnxPrediction
from .engine_api import POLICIES, EngineConfig, EngineFailed, QueueFull, Steps
from .engine_tables import SlotTable

__all__ = ["POLICIES", "Engine", "EngineConfig", "EngineFailed", "QueueFull", "Steps"]
log = logging.getLogger("glancefocus.engine")


@dataclass
class _Chunk:
    """Images that entered one step's queue together, with their state."""

    slots: np.ndarray
    images: Any
    state: list[Any]
    entered: float  # time.monotonic() when they joined this queue
    arrival: float  # earliest arrival of their requests


class Engine:
    """The scheduler.  ``observe(t, batch_size, exits)`` is called after every batch (metrics).

    Use ``submit`` from any thread; ``start`` / ``stop`` run and drain the worker thread.
    """

    def __init__(self, steps: Steps, config: EngineConfig = EngineConfig(), *,
                 observe: Callable[[int, int, int], None] | None = None,
                 on_death: Callable[[BaseException], None] | None = None) -> None:
        self.steps, self.config, self.observe, self.on_death = steps, config, observe, on_death
        self.T = steps.T
        self._slots = SlotTable(config.max_queued, steps.T, steps.num_classes, steps.action_dims, steps.patch_steps)
        self._queues: list[deque[_Chunk]] = [deque() for _ in range(self.T)]
        self._sizes = np.zeros(self.T, dtype=np.int64)
        self._cond = threading.Condition()
        self._stopping = False
        self._reserved = 0  # images of requests being decoded, admitted ahead
        self.error: BaseException | None = None  # why the worker died
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------- clients
    def submit(self, images: np.ndarray, thresholds: np.ndarray, *, _reserved: int = 0) -> Future[OnnxPrediction]:
        """Queue normalised images (B, 3, H, W) with their thresholds η_1..η_T; the future
        gives their :class:`OnnxPrediction` (cancel it to give up: the images are dropped).
        Raises :class:`QueueFull` if they do not fit, :class:`EngineFailed` if the engine died."""
        thresholds = np.asarray(thresholds, dtype=np.float32).ravel()
        if thresholds.size != self.T:
            raise ValueError(f"expected {self.T} thresholds (one per step, T={self.T}), got {thresholds.size}")
        if len(images) == 0:
            raise ValueError("no images to predict")
        if len(images) > self.config.max_queued:
            raise ValueError(f"{len(images)} images is more than the engine holds at once ({self.config.max_queued})")
        future: Future[OnnxPrediction] = Future()
        now = time.monotonic()
        with self._cond:
            self._check_room(len(images) - _reserved)
            self._reserved -= _reserved
            slots = self._slots.admit(len(images), thresholds, future, now)
            rid = int(self._slots.owner[slots[0]])
            self._push(0, _Chunk(slots, self.steps.put(np.ascontiguousarray(images, dtype=np.float32)), [], now, now))
            self._cond.notify_all()
        future.add_done_callback(lambda f: f.cancelled() and self._cancel(rid))
        return future

    @contextmanager
    def reserve(self, n: int) -> Iterator[Callable[[np.ndarray, np.ndarray], Future[OnnxPrediction]]]:
        """Room for ``n`` images, held while their request is decoded: QueueFull / EngineFailed
        at once if there is none.  Yields ``submit`` into that room; unused room is given back."""
        if n > self.config.max_queued:
            raise ValueError(f"{n} images is more than the engine holds at once ({self.config.max_queued})")
        with self._cond:
            self._check_room(n)
            self._reserved += n
        held = [n]
        try:
            yield lambda images, thresholds: self.submit(images, thresholds, _reserved=held.pop())
        finally:
            if held:
                with self._cond:
                    self._reserved -= n

    def _check_room(self, n: int) -> None:
        """Raise unless ``n`` more images fit now (called under the lock)."""
        if self.error is not None:
            raise EngineFailed(f"the engine stopped after an internal error ({type(self.error).__name__})")
        if self._stopping:
            raise QueueFull("the engine is shutting down")
        if n > self._slots.free - self._reserved:
            raise QueueFull(f"{self._slots.in_flight + self._reserved} images are in flight, the most this engine "
                            f"holds is {self.config.max_queued}: retry later")

    def _cancel(self, rid: int) -> None:
        with self._cond:
            self._slots.cancel(rid)
            self._cond.notify_all()

    def predict(self, images: np.ndarray, thresholds: np.ndarray) -> OnnxPrediction:
        """``submit`` and wait."""
        return self.submit(images, thresholds).result()

    def queued(self) -> int:
        """Images admitted and not yet answered."""
        return self._slots.in_flight

    def queue_sizes(self) -> list[int]:
        """Images waiting for each step now."""
        return self._sizes.tolist()

    @property
    def alive(self) -> bool:
        """The worker runs (or has drained after ``stop``) and has not died of an error."""
        return self.error is None and (self._stopping or (self._thread is not None and self._thread.is_alive()))

    # ----------------------------------------------------------------------- lifecycle
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="glancefocus-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish every image already admitted, then end the worker; after
        ``timeout`` seconds the requests still in flight fail with EngineFailed instead."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._fail_all(EngineFailed(f"the server shut down before answering (grace period of {timeout} s)"))

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                t, chunk = batch
                try:
                    probs, location, state = self.steps.step(t, chunk.images, chunk.state)
                    done = self._exits(t, chunk, probs)
                except Exception as e:  # a failing step fails its requests, not the engine
                    log.exception("step %d failed on a batch of %d images", t + 1, len(chunk.slots))
                    with self._cond:
                        finished = self._slots.fail(chunk.slots, e)
                    self._slots.resolve(finished)
                    continue
                self._record(t, chunk, done, probs, location, state)
        except BaseException as e:  # a fault of the engine itself: fail everything, loudly
            log.critical("the engine's worker died: every request in flight fails", exc_info=e)
            self.error = e
            self._fail_all(EngineFailed(f"the engine stopped after an internal error ({type(e).__name__})"))
            if self.on_death is not None:
                self.on_death(e)

    def _fail_all(self, error: EngineFailed) -> None:
        with self._cond:
            self._stopping = True
            finished = self._slots.fail_all(error)
            self._sizes[:] = 0
            for queue in self._queues:
                queue.clear()
        self._slots.resolve(finished)

    def _next_batch(self) -> tuple[int, _Chunk] | None:
        with self._cond:
            while True:
                t, wait = self._choose(time.monotonic())
                if t is not None:
                    chunk = self._drop_cancelled(self._pop(t))
                    if chunk is not None:
                        return t, chunk
                    continue
                if self._stopping and not self._sizes.any():
                    return None
                self._cond.wait(wait)

    def _drop_cancelled(self, chunk: _Chunk) -> _Chunk | None:
        """``chunk`` without the images of cancelled requests (their slots freed); None if empty."""
        dropped = self._slots.dropped[chunk.slots]
        if not dropped.any():
            return chunk
        self._slots.finish(chunk.slots[dropped])  # cancelled: nobody to answer
        keep = np.flatnonzero(~dropped)
        return self._take(chunk, keep, chunk.entered) if keep.size else None

    def _choose(self, now: float) -> tuple[int | None, float | None]:
        """The ready step the policy picks, or (None, seconds until one is ready)."""
        waiting = np.flatnonzero(self._sizes)
        if waiting.size == 0:
            return None, None
        max_wait = self.config.max_wait_ms / 1000
        heads = [self._queues[t][0] for t in waiting]
        waited = np.array([now - h.entered for h in heads])
        upstream_empty = np.cumsum(self._sizes)[waiting] == self._sizes[waiting]
        ready = (self._sizes[waiting] >= self.config.max_batch) | (waited >= max_wait) | (upstream_empty & (waiting > 0))
        if self._stopping:
            ready[:] = True  # draining: nothing new will come
        if not ready.any():
            return None, float(max_wait - waited.max())
        candidates = np.flatnonzero(ready)
        if self.config.policy == "deepest":
            pick = candidates[-1]
        elif self.config.policy == "oldest":
            pick = candidates[np.argmin([heads[i].arrival for i in candidates])]
        else:
            pick = candidates[np.argmax(self._sizes[waiting][candidates])]
        return int(waiting[pick]), None

    def _push(self, t: int, chunk: _Chunk) -> None:
        self._queues[t].append(chunk)
        self._sizes[t] += len(chunk.slots)

    def _pop(self, t: int) -> _Chunk:
        """Up to ``max_batch`` images from the front of step ``t``'s queue, as one chunk."""
        queue, room, parts = self._queues[t], self.config.max_batch, []
        while queue and room > 0:
            head = queue.popleft()
            n = len(head.slots)
            if n > room:  # split: the rest stays at the front
                rest = np.arange(room, n)
                queue.appendleft(self._take(head, rest, head.entered))
                head = self._take(head, np.arange(room), head.entered)
            parts.append(head)
            room -= len(head.slots)
        self._sizes[t] -= self.config.max_batch - room
        if len(parts) == 1:
            return parts[0]
        cat = self.steps.cat
        state = [cat([p.state[i] for p in parts]) for i in range(len(parts[0].state))]
        return _Chunk(np.concatenate([p.slots for p in parts]), cat([p.images for p in parts]), state,
                      parts[0].entered, min(p.arrival for p in parts))

    def _take(self, chunk: _Chunk, index: np.ndarray, entered: float) -> _Chunk:
        take = self.steps.take
        return _Chunk(chunk.slots[index], take(chunk.images, index), [take(s, index) for s in chunk.state],
                      entered, chunk.arrival)

    def _exits(self, t: int, chunk: _Chunk, probs: np.ndarray) -> np.ndarray:
        """Which images of the batch leave after step ``t`` (all of them after the last)."""
        if probs.shape != (len(chunk.slots), self.steps.num_classes):  # checked here: it would corrupt the tables
            raise ValueError(f"step {t + 1} returned probabilities of shape {probs.shape} for {len(chunk.slots)} images")
        if t == self.T - 1:
            return np.ones(len(chunk.slots), dtype=bool)
        return probs.max(axis=1) >= self._slots.thresholds[chunk.slots, t]

    def _record(self, t: int, chunk: _Chunk, done: np.ndarray, probs: np.ndarray, location: np.ndarray | None,
                state: list[Any]) -> None:
        """Write the exits of one batch, move the others to step t+1, answer finished requests."""
        with self._cond:
            done = done | self._slots.dropped[chunk.slots]  # cancelled meanwhile: go no further
            self._slots.write(t, chunk.slots, done, probs, location)
            stay = np.flatnonzero(~done)
            if stay.size:
                moved = _Chunk(chunk.slots, chunk.images, state, time.monotonic(), chunk.arrival)
                self._push(t + 1, self._take(moved, stay, moved.entered))
            finished = self._slots.finish(chunk.slots[done])
            self._cond.notify_all()
        self._slots.resolve(finished)
        if self.observe is not None:
            try:
                self.observe(t, len(chunk.slots), len(chunk.slots) - stay.size)
            except Exception:  # metrics must never stop the engine
                log.exception("the engine's observe hook failed")

