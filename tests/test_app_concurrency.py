"""50 parallel analyses on a live uvicorn: all answered 200, all stored, none lost; the loop never blocks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from medlens.app.api import create_app
from tests.helpers_app import FakePipeline, LiveServer, png_bytes, rgb_image

N = 50


def test_fifty_parallel_analyses_are_all_answered_and_stored(tmp_path):
    skin, polyp = FakePipeline("skin"), FakePipeline("polyp")  # each raises if two threads enter it at once
    app = create_app(
        models_dir=tmp_path / "models",
        home=tmp_path / "home",
        pipelines={"skin": skin, "polyp": polyp},
        ui=False,
    )
    # 10 distinct images, each sent 5 times: exercises content-hash dedup under concurrency too
    images = [png_bytes(rgb_image(32, seed=i % 10)) for i in range(N)]

    with LiveServer(app) as server:

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                files = {"file": (f"img{i}.png", images[i], "image/png")}
                return client.post(
                    "/api/v1/analyze", files=files, data={"pipeline": ("skin", "polyp")[i % 2]}
                )

        with ThreadPoolExecutor(max_workers=N) as pool:
            responses = list(pool.map(one, range(N)))

        failed = [r.text for r in responses if r.status_code != 200]
        assert not failed, failed
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == N
        with httpx.Client(base_url=server.url, timeout=60) as client:
            listed = client.get("/api/v1/analyses", params={"page_size": 200}).json()
            assert listed["total"] == N and {it["id"] for it in listed["items"]} == ids
            for r in responses[:10]:
                assert client.get(r.json()["segmentation"]["mask_url"]).status_code == 200

    store = app.state.service.store
    assert store.count() == N and skin.calls + polyp.calls == N
    for analysis_id in ids:
        for kind in ("image", "mask", "overlay", "gradcam", "thumb"):
            assert store.file_path(analysis_id, kind) is not None, (analysis_id, kind)
    image_hashes = {store.get(i)["files"]["image"] for i in ids}
    assert len(image_hashes) == 10  # the same upload is stored once
    assert not list((tmp_path / "home" / "files").rglob(".tmp-*"))


class _BlockingPipeline(FakePipeline):
    """Holds the analysis until released, to show that the event loop keeps serving meanwhile."""

    def __init__(self) -> None:
        super().__init__("skin")
        self.entered, self.release = threading.Event(), threading.Event()

    def analyze(self, image, clahe=False, gradcam=True, tta=True):
        self.entered.set()
        self.release.wait(timeout=60)
        return super().analyze(image, clahe, gradcam)


def test_inference_never_blocks_the_event_loop(tmp_path):
    pipeline = _BlockingPipeline()
    app = create_app(
        models_dir=tmp_path / "models", home=tmp_path / "home", pipelines={"skin": pipeline}, ui=False
    )
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        result: dict = {}

        def slow() -> None:
            result["r"] = client.post("/api/v1/analyze", files={"file": ("a.png", png_bytes(rgb_image(24)))})

        worker = threading.Thread(target=slow)
        worker.start()
        try:
            assert pipeline.entered.wait(timeout=60), "the analysis never started"
            with httpx.Client(base_url=server.url, timeout=30) as other:
                assert other.get("/healthz").status_code == 200  # served while the model is busy
                assert other.get("/api/v1/analyses").json()["total"] == 0
        finally:
            pipeline.release.set()
            worker.join(timeout=60)
        assert result["r"].status_code == 200
