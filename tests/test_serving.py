"""Fast serving: the pipeline pool runs analyses at once and correctly, warm start gates /healthz, batched
pipeline analysis equals one-by-one analysis, thread budgets. No test depends on timing."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlens.app.api import create_app
from medlens.app.pool import PipelinePool, serving_plan
from medlens.pipelines.pipeline import Pipeline, load_pipelines
from tests.helpers_app import FakePipeline, LiveServer, png_bytes, rgb_image
from tests.helpers_inference import make_tiny_bundle

SKIN_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """Tiny skin bundles: a U-Net/MobileNetV2 segmenter and a MobileNetV2 classifier (ONNX CAM capable)."""
    root = tmp_path_factory.mktemp("serving")
    make_tiny_bundle(root, "segmentation", name="skin-seg", encoder="mobilenet_v2", input_size=64)
    make_tiny_bundle(root, "classification", name="skin-cls", arch="mobilenetv2_100", input_size=64,
                     classes=SKIN_CLASSES, num_classes=7)  # fmt: skip
    return root / "models"


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path_factory.getbasetemp() / "serving-home"))


def _skin(models_dir: Path, runtime: str) -> Pipeline:
    return load_pipelines(models_dir, runtime=runtime)["skin"]


def _images(n: int) -> list[np.ndarray]:
    return [rgb_image(48 + 4 * i, seed=i) for i in range(n)]


def _same(a, b) -> None:
    assert a.label == b.label and a.out_of_scope == b.out_of_scope
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (a.gradcam is None) == (b.gradcam is None)
    if a.gradcam is not None:
        assert np.abs(a.gradcam.astype(int) - b.gradcam.astype(int)).max() <= 2


# ------------------------------------------------------------------------------------------------ pool
class _Rendezvous(FakePipeline):
    """Every replica waits at a shared barrier: the analyses only finish if ``parties`` run at once."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__("skin")
        self.barrier = barrier

    def replicate(self) -> _Rendezvous:
        return _Rendezvous(self.barrier)

    def analyze(self, image, clahe=False, gradcam=True, tta=True):
        self.barrier.wait(timeout=60)  # raises BrokenBarrierError if the pool serialised the calls
        return super().analyze(image, clahe, gradcam)


def test_pool_runs_up_to_size_analyses_at_once(tmp_path: Path) -> None:
    barrier = threading.Barrier(3)
    app = create_app(models_dir=tmp_path / "m", home=tmp_path / "home", ui=False, workers=3,
                     pipelines={"skin": _Rendezvous(barrier)})  # fmt: skip
    assert app.state.service.pools["skin"].size == 3
    with LiveServer(app) as server:

        def post(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                return client.post(
                    "/api/v1/analyze", files={"file": (f"{i}.png", png_bytes(rgb_image(24, i)))}
                )

        with ThreadPoolExecutor(max_workers=6) as run:
            responses = list(run.map(post, range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    assert app.state.service.store.count() == 6


def test_objects_without_replicate_get_a_pool_of_one() -> None:
    pool = PipelinePool(FakePipeline("skin"), size=4)
    assert pool.size == 1


def test_waiting_threads_are_served_first_come_first_served() -> None:
    pool = PipelinePool(FakePipeline("skin"), size=1)
    order: list[int] = []

    def wait_then_record(i: int) -> None:
        with pool.acquire():
            order.append(i)

    threads = [threading.Thread(target=wait_then_record, args=(i,)) for i in range(6)]
    with pool.acquire():
        for n, t in enumerate(threads, 1):
            t.start()
            while pool.waiting < n:  # each one queued before the next starts
                threading.Event().wait(0.001)
    for t in threads:
        t.join(timeout=60)
    assert order == list(range(6))


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_concurrent_analyses_on_replicas_equal_sequential_ones(models_dir: Path, runtime: str) -> None:
    pipe = _skin(models_dir, runtime)
    images = _images(8)
    expected = [pipe.analyze(im) for im in images]
    pool = PipelinePool(pipe, size=3)
    assert len({id(r) for r in pool.replicas}) == 3

    def one(i: int):
        with pool.acquire() as replica:
            return replica.analyze(images[i % len(images)])

    with ThreadPoolExecutor(max_workers=6) as run:
        got = list(run.map(one, range(16)))
    for i, analysis in enumerate(got):
        _same(analysis, expected[i % len(images)])
    if runtime == "torch":  # each replica explains with its own copy of the model (Grad-CAM hooks it)
        assert len({id(r.classifier.model) for r in pool.replicas}) == 3
    else:  # ONNX Runtime sessions are shared
        assert len({id(r.classifier.runner) for r in pool.replicas}) == 1


def test_live_server_with_real_pipelines_stores_every_analysis(models_dir: Path, tmp_path: Path) -> None:
    app = create_app(models_dir=models_dir, home=tmp_path / "home", ui=False, runtime="onnx", workers=2)
    service = app.state.service
    assert service.wait_ready(timeout=300) and set(service.warm_up_ms) == {"skin"}
    with LiveServer(app) as server:

        def post(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                files = {"file": (f"{i}.png", png_bytes(rgb_image(40, seed=i)))}
                return client.post("/api/v1/analyze", files=files, data={"pipeline": "skin"})

        with ThreadPoolExecutor(max_workers=8) as run:
            responses = list(run.map(post, range(12)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    ids = {r.json()["id"] for r in responses}
    assert service.store.count() == len(ids) == 12
    assert all(r.json()["gradcam_url"] for r in responses)


def test_serving_plan_budgets_threads(monkeypatch) -> None:
    monkeypatch.setenv("MEDLENS_WORKERS", "3")  # read by the settings only, never by the plan
    monkeypatch.setenv("MEDLENS_NUM_THREADS", "5")
    assert serving_plan(cores=2).workers == 2 and serving_plan(cores=2).threads == 1
    assert serving_plan(cores=8).workers == 4 and serving_plan(cores=8).threads == 2  # at most 4 by default
    assert (serving_plan(2, cores=8).workers, serving_plan(2, cores=8).threads) == (2, 4)
    assert serving_plan(16, cores=4).threads == 1
    assert (serving_plan(3, cores=6).workers, serving_plan(3, cores=6).threads) == (3, 2)


def test_workers_are_shared_by_every_pipeline(tmp_path) -> None:
    """Two pipelines, one worker: analyses of both never overlap (the budget is the process's)."""
    from medlens.app.service import AnalysisService
    from medlens.app.store import HistoryStore

    running, peak, lock = [0], [0], threading.Lock()

    class Busy(FakePipeline):
        def analyze(self, image, clahe=False, gradcam=True, tta=True):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return super().analyze(image, clahe, gradcam, tta)

    service = AnalysisService({"a": Busy("a"), "b": Busy("b")}, HistoryStore(home=tmp_path), workers=1)
    image = png_bytes(rgb_image(16))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda name: service.analyze_bytes(image, name), "abab"))
    assert peak[0] == 1 and service.store.count() == 4 and len({r["id"] for r in results}) == 4
    service.close()


# ------------------------------------------------------------------------------------------------ warm start
class _SlowStart(FakePipeline):
    def __init__(self) -> None:
        super().__init__("skin")
        self.release, self.warmed = threading.Event(), 0

    def warm_up(self) -> float:
        self.release.wait(timeout=60)
        self.warmed += 1
        return 1.0


def test_healthz_is_503_until_every_pipeline_is_warm(tmp_path: Path) -> None:
    pipe = _SlowStart()
    app = create_app(models_dir=tmp_path / "m", home=tmp_path / "home", pipelines={"skin": pipe}, ui=False)
    with TestClient(app) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["ready"] is False and r.json()["status"] == "starting"
        pipe.release.set()
        assert app.state.service.wait_ready(timeout=60)
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["ready"] is True and pipe.warmed == 1
        assert pipe.calls == 0  # warming up is not an analysis: nothing stored
        assert client.get("/api/v1/analyses").json()["total"] == 0


def test_without_warm_up_the_app_is_ready_at_once(models_dir: Path, tmp_path: Path) -> None:
    app = create_app(
        models_dir=models_dir, home=tmp_path / "home", ui=False, runtime="onnx", workers=1, warm_up=False
    )
    with TestClient(app) as client:
        assert client.get("/healthz").json()["ready"] is True
    assert app.state.service.warm_up_ms == {}


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_warm_up_runs_every_stage(models_dir: Path, runtime: str, monkeypatch) -> None:
    import medlens.inference.explain as explain

    pipe = _skin(models_dir, runtime)
    calls = {"backprop": 0}
    real = explain.gradcam
    monkeypatch.setattr(
        explain, "gradcam", lambda *a, **k: (calls.__setitem__("backprop", 1), real(*a, **k))[1]
    )
    assert pipe.warm_up() > 0
    if runtime == "onnx":  # Grad-CAM came from the classification pass: torch never loaded the classifier
        assert calls["backprop"] == 0 and pipe.classifier._model is None and pipe.classifier.has_features
    else:
        assert calls["backprop"] == 1


# ------------------------------------------------------------------------------------------------ batches
def _count_calls(predictor) -> list[int]:
    sizes: list[int] = []
    runner = predictor.runner

    class Counting:
        def __getattr__(self, name):
            return getattr(runner, name)

        def __call__(self, x):
            sizes.append(x.shape[0])
            return runner(x)

        def run(self, x):
            sizes.append(x.shape[0])
            return runner.run(x)

    predictor.runner = Counting()
    return sizes


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_analyze_batch_equals_one_by_one_with_one_model_call_per_batch(models_dir: Path, runtime: str):
    pipe = _skin(models_dir, runtime)
    images = _images(5)
    one_by_one = [pipe.analyze(im) for im in images]
    pipe.segmenter.batch_size, pipe.classifier.batch_size = 8, 24
    seg_calls, cls_calls = _count_calls(pipe.segmenter), _count_calls(pipe.classifier)
    batched = pipe.analyze_batch(images)
    for a, b in zip(batched, one_by_one, strict=True):
        _same(a, b)
        assert a.timings_ms["segment"] > 0 and a.timings_ms["classify"] > 0
    if runtime == "onnx":  # TTA views batched too: one call per model for the 5 images
        assert seg_calls == [15] and cls_calls == [15]
    else:
        assert seg_calls == [5, 5, 5] and cls_calls == [15]


def test_analyze_batches_and_warm_up_run_one_sequence_of_stages(models_dir: Path, monkeypatch) -> None:
    from medlens.pipelines.analyzer import Analyzer

    pipe, image = _skin(models_dir, "onnx"), _images(1)[0]
    runs: list[tuple[int, bool]] = []
    real = Analyzer.run

    def spy(self, images, *args, scope=True, **kwargs):
        runs.append((len(images), scope))
        return real(self, images, *args, scope=scope, **kwargs)

    monkeypatch.setattr(Analyzer, "run", spy)
    single, (batched,) = pipe.analyze(image), pipe.analyze_batch([image])
    pipe.warm_up()
    assert runs == [(1, True), (1, True), (1, False), (1, False)]  # warm-up: two rounds, scope checks off
    summary = [a.to_dict() for a in (single, batched)]
    for d in summary:
        d.pop("timings_ms")
    assert summary[0] == summary[1]  # a batch of one is the single analysis, to the bit
    for key in ("mask", "overlay", "gradcam"):
        np.testing.assert_array_equal(getattr(single, key), getattr(batched, key))


def test_predict_folder_with_a_pipeline_in_batches_reports_images_per_second(
    models_dir: Path, tmp_path: Path
):
    from medlens.pipelines.batch import predict_paths

    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(_images(5)):
        Image.fromarray(im).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    summary = predict_paths(
        "skin", folder, tmp_path / "out", runtime="onnx", batch_size=4, models_dir=models_dir
    )
    stats = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (
        stats["ok"] == 5 and stats["errors"] == 1 and stats["images_per_s"] > 0 and stats["batch_size"] == 4
    )
    assert summary.read_text().count("\n") == 7  # header + 6 rows
    assert sorted(p.name for p in (tmp_path / "out").glob("*_gradcam.png")) == [
        f"{i}_gradcam.png" for i in range(5)
    ]
