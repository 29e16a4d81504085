"""Smoke tests of the benchmark scripts: each ``main`` runs with the tiniest settings and returns / writes the
expected keys. No timing assertions: the numbers depend on the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import common, pipelines


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight skin-seg / skin-cls bundles with their model.onnx, built once for this module; the
    benchmarks copy them as they would copy the shipped bundles."""
    from medlens.inference.export import export_onnx

    work = tmp_path_factory.mktemp("bench-models")
    models, _ = pipelines.prepare_skin_models(work / "absent", work, tiny=True)
    for name in pipelines.SKIN_BUNDLES:
        export_onnx(models / name)
    return models


@pytest.fixture()
def bench_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Scratch MEDLENS_HOME, one model thread and no progress bars, all restored afterwards."""
    monkeypatch.setenv("MEDLENS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDLENS_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return tmp_path


def test_update_section_replaces_only_its_block(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    common.update_section(md, "a", "first A")
    common.update_section(md, "b", "only B")
    common.update_section(md, "a", "second A")
    text = md.read_text()
    assert text.startswith("# medlens benchmarks")
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.index("<!-- bench:a -->") < text.index("<!-- bench:b -->")


def test_percentiles_and_ratio() -> None:
    stats = common.percentiles([1.0, 2.0, 3.0, 4.0])
    assert set(stats) == {"n", "mean", "p50", "p95", "p99", "min", "max"} and stats["n"] == 4
    assert common.percentiles([])["n"] == 0
    assert common.ratio(3.0, 2.0) == 1.5 and common.ratio(1.0, 0.0) is None


TINY_RUN = ["--repeats", "1", "--batch-repeats", "1", "--warmup", "0", "--block", "1", "--batch", "2"]


@pytest.fixture()
def no_shared_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared data sets out of reach: every pipeline falls back to synthetic images."""
    monkeypatch.setattr(pipelines, "SHARED_DATASETS", tmp_path / "no-datasets")


def test_inference_cli_pipelines_images_and_keys() -> None:
    from benchmarks import inference

    names = pipelines.pipeline_names()
    assert {"skin", "polyp", "chest-xray"} <= set(names)
    assert inference.parse_args([]).pipelines == names  # default: all
    args = inference.parse_args(["--pipeline", "polyp", "--pipeline", "skin", "--pipeline", "polyp",
                                 "--images", "/data/all", "--images", "chest-xray=/data/cxr"])  # fmt: skip
    assert args.pipelines == ["polyp", "skin"]
    assert args.image_folders == {**dict.fromkeys(names, "/data/all"), "chest-xray": "/data/cxr"}
    assert inference.parse_args(["--pipeline", "skin", "--pipeline", "all"]).pipelines == names
    assert inference.parse_args(["--v2-standins"]).pipelines == ["skin"]  # v2 stand-ins are skin bundles
    with pytest.raises(SystemExit):
        inference.parse_args(["--images", "fundus=/data/x"])
    assert inference.section_key("inference", "skin") == "inference"  # skin keeps the historic key
    assert inference.section_key("inference", "chest-xray") == "inference-chest-xray"
    assert inference.section_key("inference-v2", "polyp") == "inference-v2-polyp"


def test_pipeline_bundles_and_synthetic_images(no_shared_data: None) -> None:
    assert pipelines.bundle_names(pipelines.pipeline_config("polyp")) == ["polyp-seg"]
    assert pipelines.bundle_names(pipelines.pipeline_config("chest-xray")) == [
        "chest-anatomy",
        "chest-xray-cls",
    ]
    assert pipelines.pipeline_config("chest-xray").scope.expect == "any"  # checks off: every stage runs
    assert pipelines.pipeline_config("chest-xray", scope=True).scope.expect == "grayscale"
    grey, desc = pipelines.pipeline_images("chest-xray", None, 3)
    assert len(grey) == 3 and grey[0].shape[2] == 1 and grey[0].dtype.name == "uint8" and "synthetic" in desc
    assert grey[0].std() > 10  # lungs and heart, not a flat image
    colour, _ = pipelines.pipeline_images("polyp", None, 2)
    assert colour[0].shape[2] == 3


def test_inference_benchmark_covers_every_pipeline(bench_env: Path, no_shared_data: None) -> None:
    """``--tiny --repeats 1``: random-weight stand-ins of every pipeline's bundles, its modality check's
    included, synthetic images; one row per pipeline and variant with the pipeline's stages (the modality
    check first, timed), the speed-ups and the targets; one section each."""
    from benchmarks import inference

    out = bench_env / "BENCHMARKS.md"
    out.write_text(
        "# medlens benchmarks\n\n<!-- bench:inference -->\nOLD SKIN TEXT\n<!-- /bench:inference -->\n"
    )
    import torch

    torch.set_num_threads(2)  # a process's default on two cores: the benchmark must size torch's pool itself
    try:
        res = inference.main(["--tiny", *TINY_RUN, "--threads", "1", "--json", str(bench_env / "inf.json"),
                              "--out", str(out)])  # fmt: skip
    finally:
        torch.set_num_threads(1)
    assert list(res["pipelines"]) == pipelines.pipeline_names()
    assert res["settings"]["threads"] == res["machine"]["torch_threads"] == 1  # torch as many threads as ORT
    for name, r in res["pipelines"].items():
        config = pipelines.pipeline_config(name)
        assert r["section"] == inference.section_key("inference", name)
        assert r["models"].startswith("random-weight stand-ins") and "synthetic" in r["images"]
        assert "; modality check: " in r["models"] and r["modality_check"] == config.modality_check.bundle
        assert set(r["batch1"]) == set(inference.VARIANTS)
        stages = r["stages"]
        assert stages[-1] == "total" and {"modality", "segment", "gradcam", "advice"} <= set(stages)
        assert "modality" not in r["stages_zero"]
        if config.classifier is not None:
            assert all(row["stages_ms_p50"]["classify"] > 0 for row in r["batch1"].values())
        for row in r["batch1"].values():
            assert row["latency_ms"]["n"] == 1 and row["latency_ms"]["p50"] > 0
            assert list(row["stages_ms_p50"]) == stages and row["stages_ms_p50"]["total"] > 0
            assert row["stages_ms_p50"]["modality"] > 0  # the modality check ran, as in every served pipeline
            assert row["gradcam_ran"] == 1  # scope off: every stage ran, whatever the random checks said
        parts = ["segmenter", *(["classifier"] if config.classifier else []), "pipeline", "analyze_batch"]
        assert r["batched_parts"] == parts
        assert set(r["batched"]) == {f"{v} {p}" for v in inference.VARIANTS for p in parts}
        torch_p50 = r["batch1"]["torch"]["latency_ms"]["p50"]
        for v in ("onnx-before", "onnx", "onnx-int8"):
            speed = r["speedup_vs_torch"][v]
            assert speed["batch1_p50"] == common.ratio(torch_p50, r["batch1"][v]["latency_ms"]["p50"]) > 0
            assert set(speed) == {"batch1_p50", "batch1_p95", *(f"batched_{p}" for p in parts)}
            assert None not in speed.values()
            assert r["targets"][v]["p50_le_150ms"] == (r["batch1"][v]["latency_ms"]["p50"] <= 150.0)
            assert r["targets"][v]["ge_1.5x_torch"] == (speed["batch1_p50"] >= 1.5)
        assert set(r["analyze_batch_vs_sequential"]) == set(inference.VARIANTS)
        assert set(r["int8"]) == set(pipelines.bundle_names(config))
        assert {x["checked"] for x in r["int8"].values()} == {False}  # random weights: timed, not checked
        assert set(r["tta"]) == set(pipelines.bundle_names(config))
    polyp, chest = res["pipelines"]["polyp"], res["pipelines"]["chest-xray"]
    assert polyp["gradcam_by"] == "segmenter" and "classify" in polyp["stages_zero"]
    assert chest["gradcam_by"] == "classifier" and "x1" in chest["images"]  # grey films stay one channel
    assert json.loads((bench_env / "inf.json").read_text())["pipelines"]["skin"]["benchmark"] == "inference"
    text = out.read_text()
    assert "OLD SKIN TEXT" not in text  # the skin section replaced, not duplicated
    for name in pipelines.pipeline_names():
        key = inference.section_key("inference", name)
        assert text.count(f"<!-- bench:{key} -->") == 1 and text.count(f"<!-- /bench:{key} -->") == 1
        block = text.split(f"<!-- bench:{key} -->")[1].split(f"<!-- /bench:{key} -->")[0]
        assert f"## Inference: {name} pipeline" in block and "| variant | n | p50 ms" in block
        assert " gradcam p50 |" in block and "| onnx-int8 |" in block and "p50 <= 150 ms" in block
        assert "| modality p50 |" in block and "the modality check first, as served (bundle modality" in block


def test_inference_benchmark_guided_chest_classifier(
    bench_env: Path, no_shared_data: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chest classifier guided by the anatomy segmentation (spec ``guide``: crop), copied from ``--models``:
    its int8 graph is calibrated and its batched call timed on the guided crops, as the pipeline feeds it."""
    from benchmarks import inference

    models = tmp_path / "models"
    pipelines.make_random_bundle(pipelines.shipped_spec("chest-anatomy"), models / "chest-anatomy")
    spec = {**pipelines.shipped_spec("chest-xray-cls"), "guide": {"bundle": "chest-anatomy", "mode": "crop"}}
    pipelines.make_random_bundle(spec, models / "chest-xray-cls")
    fed: list[tuple[int, ...]] = []

    def spy(pipeline: object, images: list) -> list:
        out = pipelines.classifier_inputs(pipeline, images)
        fed.extend(x.shape for x in out)
        return out

    monkeypatch.setattr(inference, "classifier_inputs", spy)
    res = inference.main(["--pipeline", "chest-xray", "--models", str(models), *TINY_RUN, "--variants",
                          "torch", "onnx-int8", "--json", str(bench_env / "guided.json")])  # fmt: skip
    r = res["pipelines"]["chest-xray"]
    assert r["models"].startswith("shipped bundles from") and r["guided"] == "crop"
    assert set(r["batch1"]) == {"torch", "onnx-int8"} and r["batch1"]["onnx-int8"]["gradcam_ran"] == 1
    assert r["batch1"]["onnx-int8"]["stages_ms_p50"]["classify"] > 0
    assert "onnx-int8 classifier" in r["batched"] and r["speedup_vs_torch"]["onnx-int8"]["batched_classifier"]
    assert "guided by the segmentation (crop)" in inference.markdown(r)
    assert fed and set(fed) == {(224, 224, 1)}  # crops at the classifier's input size, not the 256x256 films


def test_train_throughput_benchmark_runs(bench_env: Path) -> None:
    from benchmarks import train_throughput

    res = train_throughput.main(
        ["--synthetic", "--max-images", "10", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1",
         "--num-workers", "0", "--device", "cpu", "--json", str(bench_env / "train.json"),
         "--work-dir", str(bench_env)]
    )  # fmt: skip
    for path in ("naive", "medlens-fp32", "medlens-bf16"):
        r = res[path]
        assert r["images_per_s"] > 0 and r["flops_per_step"] > 0
        assert {"step_ms_p50", "precision", "memory_format", "achieved_gflops", "pct_of_matmul_rate"} <= set(
            r
        )
    assert {"setup_s", "batch_prep_ms_p50", "cache_device"} <= set(res["medlens-bf16"])
    assert res["medlens-bf16"]["precision"] == "bfloat16" and res["medlens-fp32"]["precision"] == "fp32"
    assert None not in (
        res[k] for k in ("speedup_medlens_vs_naive", "speedup_bf16_vs_naive", "speedup_bf16_vs_fp32")
    )
    assert res["matmul"]["flops_per_s"] > 0


def test_server_load_benchmark_runs(bench_env: Path, tiny_models: Path) -> None:
    from benchmarks import server_load

    res = server_load.main(
        ["--models", str(tiny_models), "--scope", "off", "--clients", "2", "--seconds", "2",
         "--n-images", "2", "--configs", "before", "after", "--json", str(bench_env / "server.json")]
    )  # fmt: skip
    assert list(res["results"]) == ["before", "after"]
    for r in res["results"].values():
        assert r["successful"] >= 1 and r["errors"] == 0
        assert r["all_stored"] and r["stored"] == r["successful"]
        assert {"p50", "p99"} <= set(r["latency_ms"]) and r["requests_per_s"] > 0
        assert "total" in r["server_timings_ms_p50"] and len(r["first_requests_ms"]) == server_load.SEQUENTIAL
    assert res["results"]["before"]["config"]["workers"] == 1
    assert res["results"]["after"]["config"]["warm_up"] and res["results"]["after"]["config"]["int8"]


def test_batch_predict_benchmark_runs(bench_env: Path, tiny_models: Path) -> None:
    from benchmarks import batch_predict

    res = batch_predict.main(
        ["--models", str(tiny_models), "--n-images", "3", "--batch", "2", "--repeats", "1",
         "--json", str(bench_env / "batch.json")]
    )  # fmt: skip
    assert set(res["runs"]) == {"1", "2"} and res["speedup"] > 0
    assert all(r["ok"] == 3 and r["images_per_s"] > 0 for runs in res["runs"].values() for r in runs)
