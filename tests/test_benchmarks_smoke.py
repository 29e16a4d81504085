"""Smoke tests of the benchmark scripts: each ``main`` runs with the tiniest settings and returns / writes the
expected keys. No timing assertions: the numbers depend on the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import common


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight skin-seg / skin-cls bundles with their model.onnx, built once for this module; the
    benchmarks copy them as they would copy the shipped bundles."""
    from medlens.inference.export import export_onnx

    work = tmp_path_factory.mktemp("bench-models")
    models, _ = common.prepare_skin_models(work / "absent", work, tiny=True)
    for name in common.SKIN_BUNDLES:
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


def test_inference_benchmark_runs(bench_env: Path, tiny_models: Path) -> None:
    import torch

    from benchmarks import inference

    out = bench_env / "BENCHMARKS.md"
    torch.set_num_threads(2)  # a process's default on two cores: the benchmark must size torch's pool itself
    try:
        res = inference.main(
            ["--models", str(tiny_models), "--repeats", "1", "--batch-repeats", "1",
             "--warmup", "0", "--block", "1", "--batch", "2", "--no-tta", "--threads", "1",
             "--json", str(bench_env / "inference.json"), "--out", str(out)]
        )  # fmt: skip
    finally:
        torch.set_num_threads(1)
    assert res["settings"]["threads"] == res["machine"]["torch_threads"] == 1  # torch as many threads as ORT
    assert set(res["batch1"]) == set(inference.VARIANTS)
    for r in res["batch1"].values():
        assert {"p50", "p95"} <= set(r["latency_ms"])
        assert set(r["stages_ms_p50"]) == set(inference.STAGES)
        assert r["gradcam_ran"] == 1  # scope checks are off: every stage runs
    assert {"torch segmenter", "onnx classifier", "onnx-int8 pipeline", "onnx analyze_batch"} <= set(
        res["batched"]
    )
    assert {"batch1_p50", "batched_pipeline"} <= set(res["speedup_vs_torch"]["onnx-int8"])
    assert set(res["targets"]) == {"onnx-before", "onnx", "onnx-int8"}
    assert {r["checked"] for r in res["int8"].values()} == {False}  # random weights: timed, not checked
    assert res["cuda"]["status"] in ("ok", "not run: no GPU")
    assert res["models"].startswith("shipped bundles from")  # the given folder, copied
    assert json.loads((bench_env / "inference.json").read_text())["benchmark"] == "inference"
    assert "<!-- bench:inference -->" in out.read_text()


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
