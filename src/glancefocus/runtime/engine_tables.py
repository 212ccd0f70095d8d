"""The engine's fixed-size tables: one slot per admitted image, written in place by whole
batches (no per-image Python work), and the requests that own the slots."""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import numpy as np

from .deploy import OnnxPrediction


@dataclass
class _Request:
    slots: np.ndarray  # its images' slots, in the order they were submitted
    remaining: int  # images not yet exited
    future: Future
    error: BaseException | None = None
    cancelled: bool = False  # its caller gave up: its images are dropped wherever they wait


class SlotTable:
    """``capacity`` image slots: thresholds, exit probabilities, exit steps and locations,
    plus the owner of each slot.  Not thread-safe: the engine holds its lock around calls
    (except :meth:`resolve`, which only touches futures)."""

    def __init__(self, capacity: int, T: int, num_classes: int, action_dims: int = 2, patch_steps: int | None = None) -> None:
        self.capacity = capacity
        self.thresholds = np.zeros((capacity, T), dtype=np.float32)
        self.probs = np.zeros((capacity, num_classes), dtype=np.float32)
        self.exit_step = np.zeros(capacity, dtype=np.int64)
        patch_steps = max(T - 1, 0) if patch_steps is None else patch_steps
        self.locations = np.full((patch_steps, capacity, action_dims), np.nan, dtype=np.float32)
        self.owner = np.zeros(capacity, dtype=np.int64)
        self.dropped = np.zeros(capacity, dtype=bool)  # slots of cancelled requests
        self._free = np.arange(capacity)[::-1].copy()  # a stack: _free[:_n_free] are free
        self._n_free = capacity
        self._requests: dict[int, _Request] = {}
        self._next_id = 0

    @property
    def in_flight(self) -> int:
        return self.capacity - self._n_free

    @property
    def free(self) -> int:
        return self._n_free

    def admit(self, n: int, thresholds: np.ndarray, future: Future, now: float) -> np.ndarray | None:
        """Slots for a request of ``n`` images, or None when fewer than ``n`` are free."""
        if n > self._n_free:
            return None
        self._n_free -= n
        slots = self._free[self._n_free : self._n_free + n].copy()
        rid, self._next_id = self._next_id, self._next_id + 1
        self.owner[slots] = rid
        self.thresholds[slots] = thresholds
        self.locations[:, slots] = np.nan
        self.dropped[slots] = False
        self._requests[rid] = _Request(slots, n, future)
        return slots

    def cancel(self, rid: int) -> None:
        """Request ``rid``'s caller gave up: drop its images (the engine frees their slots as
        it meets them, and answers nobody)."""
        request = self._requests.get(rid)
        if request is not None:
            request.cancelled = True
            self.dropped[request.slots] = True

    def write(self, t: int, slots: np.ndarray, done: np.ndarray, probs: np.ndarray, location: np.ndarray | None) -> None:
        """Step ``t``'s results for a batch: the locations read, and the exits of ``done``."""
        if location is not None:
            self.locations[t - 1, slots] = location
        self.probs[slots[done]] = probs[done]
        self.exit_step[slots[done]] = t + 1

    def finish(self, slots: np.ndarray) -> list[tuple[Future, OnnxPrediction | BaseException]]:
        """Count ``slots`` as exited; free the requests now complete and return their answers."""
        owners, counts = np.unique(self.owner[slots], return_counts=True)
        finished = []
        for rid, count in zip(owners.tolist(), counts.tolist()):  # once per request, not per image
            request = self._requests.get(rid)
            if request is None:  # failed already by fail_all (a stop that timed out)
                continue
            request.remaining -= count
            if request.remaining == 0:
                del self._requests[rid]
                if not request.cancelled:
                    finished.append((request.future, request.error or self._answer(request.slots)))
                self._free[self._n_free : self._n_free + len(request.slots)] = request.slots
                self._n_free += len(request.slots)
        return finished

    def fail(self, slots: np.ndarray, error: BaseException) -> list[tuple[Future, OnnxPrediction | BaseException]]:
        """A step failed on ``slots``: their requests answer with ``error`` once all their images are out."""
        for rid in np.unique(self.owner[slots]).tolist():
            self._requests[rid].error = error
        return self.finish(slots)

    def fail_all(self, error: BaseException) -> list[tuple[Future, OnnxPrediction | BaseException]]:
        """Every request still in flight, to be answered with ``error`` (the engine has
        stopped for good: the slots are not reused)."""
        requests, self._requests = list(self._requests.values()), {}
        return [(r.future, error) for r in requests if not r.cancelled]

    def _answer(self, slots: np.ndarray) -> OnnxPrediction:
        probs = self.probs[slots]
        return OnnxPrediction(probs.argmax(axis=1), probs, self.exit_step[slots], self.locations[:, slots])

    @staticmethod
    def resolve(finished: list[tuple[Future, OnnxPrediction | BaseException]]) -> None:
        """Hand the answers to their futures (outside the engine's lock: callbacks may run)."""
        for future, answer in finished:
            try:
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
            except InvalidStateError:  # cancelled by its caller since: nobody is waiting
                pass
