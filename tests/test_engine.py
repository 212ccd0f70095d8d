"""The serving engine answers exactly as OnnxGFNet.predict / GFNet.predict on the same
images, whatever the arrival schedule, batch composition, policy and per-request budget."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from glancefocus.export.bundle import export_gfnet  # noqa: E402
from glancefocus.inference import TorchSteps  # noqa: E402
from glancefocus.runtime import Engine, EngineConfig, OnnxGFNet, OnnxSteps, QueueFull  # noqa: E402
from glancefocus.runtime.engine import EngineFailed  # noqa: E402
from glancefocus.runtime.engine import POLICIES  # noqa: E402

from serving import POINTS, POOL, SIZE, T, UNEQUAL, tiny_gfnet  # noqa: E402


@pytest.fixture(scope="module", params=[None, UNEQUAL], ids=["paper", "unequal"])
def models(request, tmp_path_factory):
    """The paper's plan, and one whose steps read different sizes (a whole-image read last)."""
    model = tiny_gfnet(request.param)
    out = export_gfnet(model, tmp_path_factory.mktemp("engine") / "onnx", classes=list("abcde"), budget_points=POINTS)
    return model, OnnxGFNet(out, threads=1)


@pytest.fixture(scope="module")
def pool(models) -> tuple[np.ndarray, np.ndarray]:
    """Images, and three sets of thresholds (budgets) set midway in wide gaps between
    neighbouring confidences, so float noise of another batch size cannot flip an exit."""
    images = torch.randn(POOL, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        confidence = models[0](images).logits.softmax(dim=2).max(dim=2).values.numpy()  # (T, POOL)
    budgets = np.full((3, T), -np.inf, dtype=np.float32)
    for t in range(T - 1):
        ranked = np.sort(confidence[t])
        mids, gaps = (ranked[1:] + ranked[:-1]) / 2, ranked[1:] - ranked[:-1]
        for b, quantile in enumerate((0.25, 0.5, 0.75)):
            near = np.argsort(np.abs(np.arange(POOL - 1) - quantile * POOL))[:5]  # 5 gaps near the quantile
            budgets[b, t] = mids[near[np.argmax(gaps[near])]]
    return images.numpy(), budgets


requests = st.lists(
    st.tuples(st.lists(st.integers(0, POOL - 1), min_size=1, max_size=4), st.integers(0, 2), st.sampled_from([0, 0, 1, 3])),
    min_size=1, max_size=8,
)
configs = st.builds(EngineConfig, max_batch=st.integers(1, 8), max_wait_ms=st.sampled_from([0.0, 1.0, 5.0]),
                    max_queued=st.just(64), policy=st.sampled_from(POLICIES))


def _serve(engine: Engine, images: np.ndarray, budgets: np.ndarray, schedule) -> list[Future]:
    """Submit each request after its delay (ms), from this thread, while the engine runs."""
    futures = []
    with engine:
        for index, budget, delay_ms in schedule:
            time.sleep(delay_ms / 1000)
            futures.append(engine.submit(images[index], budgets[budget]))
        for f in futures:
            f.result(timeout=60)
    return futures


def _check(got, expected, *, atol: float) -> None:
    np.testing.assert_array_equal(got.exit_step, np.asarray(expected.exit_step))
    np.testing.assert_array_equal(got.labels, np.asarray(expected.labels))
    np.testing.assert_allclose(got.probs, np.asarray(expected.probs), atol=atol, rtol=0)
    np.testing.assert_allclose(got.locations, np.asarray(expected.locations), atol=atol, rtol=0)  # NaN where unread


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=requests, config=configs)
def test_engine_equals_onnx_predict(models, pool, schedule, config) -> None:
    _, onnx_model = models
    images, budgets = pool
    futures = _serve(Engine(OnnxSteps(onnx_model), config), images, budgets, schedule)
    for (index, budget, _), future in zip(schedule, futures):
        _check(future.result(), onnx_model.predict(images[index], budgets[budget]), atol=1e-5)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=requests, config=configs)
def test_engine_equals_gfnet_predict(models, pool, schedule, config) -> None:
    model, _ = models
    images, budgets = pool
    futures = _serve(Engine(TorchSteps(model), config), images, budgets, schedule)
    for (index, budget, _), future in zip(schedule, futures):
        expected = model.predict(torch.from_numpy(images[index]), torch.from_numpy(budgets[budget]))
        _check(future.result(), expected, atol=1e-5)


def test_every_exit_step_is_exercised(models, pool) -> None:
    """The budgets make images leave at every step, so compaction and moves are tested."""
    _, onnx_model = models
    images, budgets = pool
    exits = np.concatenate([onnx_model.predict(images, b).exit_step for b in budgets])
    assert set(exits.tolist()) == set(range(1, T + 1))


class _Gate(OnnxSteps):
    """Steps that wait for a gate to open, so a test can fill the queues."""

    def __init__(self, model: OnnxGFNet) -> None:
        super().__init__(model)
        self.gate = threading.Event()

    def step(self, t, images, state):
        self.gate.wait(30)
        return super().step(t, images, state)


def test_full_engine_refuses_new_work_and_recovers(models, pool) -> None:
    images, budgets = pool
    steps = _Gate(models[1])
    with Engine(steps, EngineConfig(max_queued=6, max_batch=2)) as engine:
        held = [engine.submit(images[:3], budgets[0]), engine.submit(images[3:6], budgets[1])]
        assert engine.queued() == 6
        with pytest.raises(QueueFull, match="most this engine holds is 6"):
            engine.submit(images[:1], budgets[0])
        steps.gate.set()
        for f in held:
            f.result(timeout=30)
        assert engine.queued() == 0
        engine.predict(images[:6], budgets[2])  # room again


def test_stop_finishes_images_in_flight(models, pool) -> None:
    images, budgets = pool
    steps = _Gate(models[1])
    engine = Engine(steps, EngineConfig(max_batch=4)).start()
    futures = [engine.submit(images[i : i + 2], budgets[i % 3]) for i in range(0, 8, 2)]
    stopper = threading.Thread(target=engine.stop)
    stopper.start()
    time.sleep(0.05)
    with pytest.raises(QueueFull, match="shutting down"):
        engine.submit(images[:1], budgets[0])
    steps.gate.set()
    stopper.join(30)
    assert all(f.done() and f.exception() is None for f in futures)


def test_a_failing_step_fails_its_requests_only(models, pool) -> None:
    images, budgets = pool

    class Broken(OnnxSteps):
        def step(self, t, batch, state):
            if len(batch) == 3:
                raise RuntimeError("boom")
            return super().step(t, batch, state)

    with Engine(Broken(models[1]), EngineConfig(max_batch=3, max_wait_ms=0)) as engine:
        bad = engine.submit(images[:3], budgets[0])
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(timeout=30)
        good = engine.predict(images[:1], budgets[0])
    _check(good, models[1].predict(images[:1], budgets[0]), atol=1e-5)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="policy must be one of"):
        EngineConfig(policy="random")
    with pytest.raises(ValueError, match="max_batch"):
        EngineConfig(max_batch=0)


# --------------------------------------------------------------------------- faults
class _Counting(_Gate):
    """Gated steps that record each batch's size."""

    def __init__(self, model: OnnxGFNet) -> None:
        super().__init__(model)
        self.sizes: list[int] = []

    def step(self, t, images, state):
        self.gate.wait(30)
        self.sizes.append(len(images))
        return OnnxSteps.step(self, t, images, state)


def test_a_cancelled_request_is_dropped_and_the_others_answered(models, pool) -> None:
    """A caller who gives up (cancels its future) mid-batch or while queued: its images go no
    further, the requests batched with it are answered, and the engine goes on."""
    images, budgets = pool
    steps = _Counting(models[1])
    never = np.full(T, 2.0, dtype=np.float32)  # no probability reaches 2: every image runs T steps
    with Engine(steps, EngineConfig(max_batch=8, max_wait_ms=0)) as engine:
        first = engine.submit(images[:1], never)  # the batch in the step when the others are cancelled
        time.sleep(0.1)
        running_with = engine.submit(images[1:3], never)
        queued = engine.submit(images[3:6], never)
        kept = engine.submit(images[6:8], budgets[1])
        assert first.cancel() and queued.cancel()
        steps.gate.set()
        _check(kept.result(timeout=30), models[1].predict(images[6:8], budgets[1]), atol=1e-5)
        _check(running_with.result(timeout=30), models[1].predict(images[1:3], never), atol=1e-5)
        assert max(steps.sizes[1:]) == 4  # the cancelled ones never ran past their first batch
        _check(engine.predict(images[:2], budgets[0]), models[1].predict(images[:2], budgets[0]), atol=1e-5)
        assert engine.alive and engine.queued() == 0


def test_a_step_with_bad_output_fails_its_requests_only(models, pool) -> None:
    images, budgets = pool

    class Short(OnnxSteps):
        def step(self, t, batch, state):
            probs, location, state = super().step(t, batch, state)
            return (probs[:1] if len(batch) == 3 else probs), location, state

    with Engine(Short(models[1]), EngineConfig(max_batch=3, max_wait_ms=0)) as engine:
        with pytest.raises(ValueError, match=r"step 1 returned probabilities of shape \(1, 5\) for 3 images"):
            engine.submit(images[:3], budgets[0]).result(timeout=30)
        _check(engine.predict(images[:2], budgets[0]), models[1].predict(images[:2], budgets[0]), atol=1e-5)
        assert engine.alive


def test_a_dead_engine_fails_everything_at_once_and_says_so(models, pool) -> None:
    """A fault outside the step (here the state's bookkeeping) kills the worker: the requests
    in flight fail at once, new ones are refused, and on_death is told."""
    images, budgets = pool
    deaths = []

    class BadTake(OnnxSteps):
        def take(self, x, index):
            raise MemoryError("no room")

    engine = Engine(BadTake(models[1]), EngineConfig(max_batch=4, max_wait_ms=0), on_death=deaths.append).start()
    futures = [engine.submit(images[:3], np.full(T, 2.0, dtype=np.float32)), engine.submit(images[3:4], budgets[0])]
    for f in futures:
        with pytest.raises(EngineFailed, match="internal error"):
            f.result(timeout=30)
    assert not engine.alive and len(deaths) == 1 and isinstance(deaths[0], MemoryError)
    with pytest.raises(EngineFailed):
        engine.submit(images[:1], budgets[0])
    engine.stop(timeout=5)


def test_room_is_reserved_before_decoding(models, pool) -> None:
    images, budgets = pool
    with Engine(OnnxSteps(models[1]), EngineConfig(max_queued=4)) as engine:
        with engine.reserve(3) as submit:
            with pytest.raises(QueueFull, match="3 images are in flight, the most this engine holds is 4"):
                engine.reserve(2).__enter__()
            future = submit(images[:3], budgets[0])
        _check(future.result(timeout=30), models[1].predict(images[:3], budgets[0]), atol=1e-5)
        with engine.reserve(4):
            pass  # given back unused
        assert engine.predict(images[:4], budgets[0]).labels.shape == (4,)


def test_stop_gives_up_after_its_timeout(models, pool) -> None:
    images, budgets = pool
    steps = _Gate(models[1])
    engine = Engine(steps, EngineConfig(max_batch=4)).start()
    future = engine.submit(images[:2], budgets[0])
    started = time.monotonic()
    engine.stop(timeout=0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(EngineFailed, match="shut down before answering"):
        future.result(timeout=1)
    steps.gate.set()


def test_a_batch_that_returns_after_a_timed_out_stop_is_let_go(models, pool) -> None:
    """The step that outlived stop's grace period finishes into nothing: the worker ends
    quietly instead of dying on requests that were failed already."""
    images, budgets = pool
    steps = _Gate(models[1])
    engine = Engine(steps, EngineConfig(max_batch=4)).start()
    engine.submit(images[:2], budgets[0])
    engine.stop(timeout=0.2)
    steps.gate.set()
    engine._thread.join(10)
    assert not engine._thread.is_alive() and engine.error is None
