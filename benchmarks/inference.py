"""Inference latency of the skin pipeline: eager torch vs ONNX Runtime variants, side by side in one process.

Variants (``--variants``):

* ``torch``: eager torch, Grad-CAM by MONAI backpropagation (the reference);
* ``onnx-before``: ONNX Runtime float32 as before issue #14: the segmenter's 3 TTA views in 3 calls, Grad-CAM
  by torch backpropagation;
* ``onnx``: float32, TTA views in one call, Grad-CAM from the classification pass (graph output ``features``);
* ``onnx-int8``: as ``onnx`` with static int8 graphs (:func:`benchmarks.common.prepare_int8`: for bundles with
  a split and their data, the held-out check of `medlens.inference.quantize` decides whether serving may use
  them; random-weight stand-ins are timed only).

Measures per variant:

* batch 1: ``Pipeline.analyze(image)`` (segment with flip TTA, features, classify with flip TTA, Grad-CAM,
  advice) p50/p95 latency and the median of every ``timings_ms`` stage; out-of-scope checks are switched off
  so that every stage runs on every image;
* batch 8 (``--batch``): the predictors' batched ``predict_proba`` on 8 images (no TTA, one call each), the
  pipeline on the same 8 images one ``analyze`` after the other, and one ``analyze_batch`` of the 8;
* on CUDA, when there is one: batched ``predict_proba`` throughput (images/s) of both predictors.

Variants alternate in blocks (ABBA order), so all see the same background load; warm-up calls are not
timed. Results: a markdown table on stdout, a JSON file, and with ``--out BENCHMARKS.md`` its section there.

    .venv/bin/python -m benchmarks.inference --threads 1 --repeats 20 --out BENCHMARKS.md
    .venv/bin/python -m benchmarks.inference --threads 1 --models /path/to/v2/models --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/inference.py` as well as `python -m benchmarks.inference`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    bench_workdir,
    command_line,
    example_images,
    load_images,
    machine_info,
    machine_line,
    md_table,
    models_label,
    percentiles,
    prepare_int8,
    prepare_skin_models,
    ratio,
    skin_pipeline,
    synthetic_skin_images,
    update_section,
    use_int8,
    write_json,
)

VARIANTS = ("torch", "onnx-before", "onnx", "onnx-int8")
STAGES = ("preprocess", "segment", "features", "classify", "gradcam", "advice", "total")
TARGET_P50_MS = 150.0
TARGET_SPEEDUP = 1.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models", help="folder with the skin-seg and skin-cls bundles")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="random-weight bundles of the shipped architectures (automatic when --models lacks them)",
    )
    p.add_argument(
        "--v2-standins", action="store_true", help="random-weight bundles of the planned v2 architectures"
    )
    p.add_argument("--repeats", type=int, default=20, help="timed batch-1 analyses per runtime")
    p.add_argument("--batch", type=int, default=8, help="images per batched call")
    p.add_argument("--batch-repeats", type=int, default=3, help="timed batched calls per runtime")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per runtime before timing")
    p.add_argument("--block", type=int, default=5, help="consecutive calls of one runtime before switching")
    p.add_argument(
        "--images", default=None, help="folder of example images (default: HAM10000 from ../shared)"
    )
    p.add_argument("--no-tta", action="store_true", help="analyse without flip test-time augmentation")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and ONNX Runtime (MEDLENS_NUM_THREADS; default: all cores)",
    )
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/<section>.json)")
    p.add_argument("--out", default=None, help="markdown file whose section is replaced/appended")
    p.add_argument("--section", default="inference", help="section key in --out (one per configuration)")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000.0, out


def interleaved(
    calls: dict[str, Callable[[int], Any]], repeats: int, warmup: int, block: int
) -> dict[str, list]:
    """Run each ``calls[name](i)`` ``warmup`` times untimed, then ``repeats`` times timed, switching names
    every ``block`` calls in ABBA order. Returns ``{name: [(ms, result), ...]}``."""
    for fn in calls.values():
        for i in range(warmup):
            fn(i)
    out: dict[str, list] = {name: [] for name in calls}
    names, rnd = list(calls), 0
    while any(len(v) < repeats for v in out.values()):
        order = names if rnd % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(min(block, repeats - len(out[name]))):
                out[name].append(timed(lambda n=name: calls[n](len(out[n]))))
        rnd += 1
    return out


def cuda_throughput(models_dir: Path, images: list[np.ndarray], batch_sizes: Sequence[int] = (8, 32)) -> dict:
    """Batched ``predict_proba`` images/s of both predictors on CUDA (torch; ONNX Runtime with its CUDA
    provider when installed)."""
    import torch

    from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor

    if not torch.cuda.is_available():
        return {"status": "not run: no GPU"}
    import onnxruntime as ort

    runtimes = ["torch"] + (["onnx"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    out: dict[str, Any] = {"status": "ok", "device": torch.cuda.get_device_name(0), "results": {}}
    for runtime in runtimes:
        for name, cls in (("skin-seg", SegmentationPredictor), ("skin-cls", ClassificationPredictor)):
            for bs in batch_sizes:
                pred = cls(models_dir / name, runtime=runtime, device="cuda", batch_size=bs)
                batch = [images[i % len(images)] for i in range(bs)]
                for _ in range(3):
                    pred.predict_proba(batch)
                torch.cuda.synchronize()
                n, t0 = 10, time.perf_counter()
                for _ in range(n):
                    pred.predict_proba(batch)
                torch.cuda.synchronize()
                out["results"][f"{runtime} {name} b{bs}"] = round(n * bs / (time.perf_counter() - t0), 1)
    return out


# ------------------------------------------------------------------------------------------------ measure
def build(variant: str, models_dir: Path, int8: dict[str, dict[str, Any]] | None) -> Any:
    """The skin pipeline of one variant (see the module docstring), out-of-scope checks off."""
    pipe = skin_pipeline(models_dir, "torch" if variant == "torch" else "onnx", scope=False)
    if variant == "onnx-before":
        pipe.segmenter.batch_views = pipe.classifier.batch_views = False
        pipe.classifier.onnx_cam = False
    elif variant == "onnx-int8":
        use_int8(pipe, int8 or {})
    return pipe


def measure(
    args: argparse.Namespace, models_dir: Path, images: list[np.ndarray], int8: dict | None
) -> dict[str, Any]:
    pipes = {v: build(v, models_dir, int8) for v in args.variants}
    tta = not args.no_tta
    n = len(images)

    def analyze(v: str) -> Callable[[int], Any]:
        return lambda i: pipes[v].analyze(images[i % n], tta=tta)

    b1 = interleaved({v: analyze(v) for v in pipes}, args.repeats, args.warmup, args.block)
    batch = [images[i % n] for i in range(args.batch)]
    groups = [
        {f"{v} segmenter": (lambda _i, v=v: pipes[v].segmenter.predict_proba(batch)) for v in pipes},
        {f"{v} classifier": (lambda _i, v=v: pipes[v].classifier.predict_proba(batch)) for v in pipes},
        {f"{v} pipeline": (lambda _i, v=v: [pipes[v].analyze(im, tta=tta) for im in batch]) for v in pipes},
        {f"{v} analyze_batch": (lambda _i, v=v: pipes[v].analyze_batch(batch, tta=tta)) for v in pipes},
    ]
    bn: dict[str, list] = {}
    for group in groups:
        bn.update(interleaved(group, args.batch_repeats, 1, 1))
    return summarise(b1, bn, args.batch)


def summarise(b1: dict[str, list], bn: dict[str, list], batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {"batch1": {}, "batched": {}}
    for v, runs in b1.items():
        timings = [a.timings_ms for _, a in runs]
        out["batch1"][v] = {
            "latency_ms": percentiles([ms for ms, _ in runs]),
            "stages_ms_p50": {
                s: round(float(np.median([t.get(s, 0.0) for t in timings])), 1) for s in STAGES
            },
            "gradcam_ran": sum(a.gradcam is not None for _, a in runs),
            "out_of_scope": sum(bool(a.out_of_scope) for _, a in runs),
        }
    for name, runs in bn.items():
        stats = percentiles([ms for ms, _ in runs])
        out["batched"][name] = {"latency_ms": stats, "images_per_s": round(batch * 1000.0 / stats["p50"], 2)}
    if "torch" in b1:
        t = out["batch1"]["torch"]["latency_ms"]
        out["speedup_vs_torch"] = {
            v: {
                "batch1_p50": ratio(t["p50"], out["batch1"][v]["latency_ms"]["p50"]),
                "batch1_p95": ratio(t["p95"], out["batch1"][v]["latency_ms"]["p95"]),
                **{
                    f"batched_{part}": ratio(
                        out["batched"][f"torch {part}"]["latency_ms"]["p50"],
                        out["batched"][f"{v} {part}"]["latency_ms"]["p50"],
                    )
                    for part in ("segmenter", "classifier", "pipeline", "analyze_batch")
                },
            }
            for v in b1
            if v != "torch"
        }
    out["analyze_batch_vs_sequential"] = {
        v: ratio(out["batched"][f"{v} pipeline"]["latency_ms"]["p50"],
                 out["batched"][f"{v} analyze_batch"]["latency_ms"]["p50"])
        for v in b1
    }  # fmt: skip
    return out


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """Issue #14 targets per ONNX variant: p50 <= 150 ms and >= 1.5x eager torch at batch 1."""
    out = {}
    for v, r in res["batch1"].items():
        if v == "torch":
            continue
        speed = (res.get("speedup_vs_torch") or {}).get(v, {}).get("batch1_p50")
        out[v] = {
            f"p50_le_{TARGET_P50_MS:.0f}ms": bool(r["latency_ms"]["p50"] <= TARGET_P50_MS),
            f"ge_{TARGET_SPEEDUP}x_torch": None if speed is None else bool(speed >= TARGET_SPEEDUP),
        }
    return out


# ------------------------------------------------------------------------------------------------ report
def _verdict(v: bool | None) -> str:
    return "met" if v else "not met" if v is not None else "n/a"


def _int8_lines(res: dict[str, Any]) -> list[str]:
    reports = res.get("int8") or {}
    lines = []
    for name, r in reports.items():
        if r.get("checked"):
            lines.append(
                f"- int8 {name}: {r['split']} {r['metric']} fp32 {r['fp32']:.4f} vs int8 {r['int8']:.4f} "
                f"({r['delta']:+.4f}, n={r['n_images']}, calibrated on {r['n_calibration']} training "
                "images): "
                f"{'ACCEPTED (within' if r['accepted'] else 'REJECTED (beyond'} {r['tolerance']})"
            )
        else:
            lines.append(f"- int8 {name}: timed only, accuracy not checked ({r['reason']})")
    return lines + ([""] if lines else [])


def markdown(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        f"## Inference: skin pipeline, eager torch vs ONNX Runtime ({s['threads']} thread"
        f"{'s' if s['threads'] > 1 else ''} per runtime; {models_label(res['models'])})",
        "",
        "What: `Pipeline.analyze` of the skin pipeline (segment + features + classify + Grad-CAM + advice; "
        f"flip TTA {'on' if s['tta'] else 'off'}; out-of-scope checks off so every stage runs) at the "
        f"models' input sizes, batch 1; and at batch {s['batch']} the predictors' batched `predict_proba` "
        f"(no TTA, one call per model), the pipeline over {s['batch']} images one `analyze` after the other "
        f"and one `analyze_batch` of them. Warm-up excluded; variants alternate in blocks. Variants: "
        "`torch` eager (MONAI Grad-CAM); `onnx-before` ONNX Runtime fp32 as before issue #14 (segmenter TTA "
        "views one call each, Grad-CAM by torch backprop); `onnx` fp32, TTA views in one call, Grad-CAM from "
        "the graph's `features` output; `onnx-int8` the same with static int8 graphs.",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {machine_line(m)}; threads per runtime: {s['threads']}; "
        f"load average (1 min) before/after: {res['load_before']} / {res['load_after']}",
        f"- Models: {res['models']}",
        f"- Images: {res['images']}",
        *_int8_lines(res)[:-1],
        "",
    ]
    rows = []
    for v, r in res["batch1"].items():
        lat, st = r["latency_ms"], r["stages_ms_p50"]
        speed = (res.get("speedup_vs_torch") or {}).get(v, {}).get("batch1_p50")
        rows.append([v, lat["n"], lat["p50"], lat["p95"], speed, *(st[k] for k in STAGES if k != "total")])
    head = [
        "variant",
        "n",
        "p50 ms",
        "p95 ms",
        "x torch (p50)",
        *(f"{k} p50" for k in STAGES if k != "total"),
    ]
    lines += ["Batch 1, `Pipeline.analyze` latency and per-stage `timings_ms` (medians, ms):", "",
              md_table(head, rows), ""]  # fmt: skip
    rows = [
        [k, v["latency_ms"]["n"], v["latency_ms"]["p50"], v["latency_ms"]["p95"], v["images_per_s"]]
        for k, v in res["batched"].items()
    ]
    lines += [
        f"Batch {s['batch']} (predictors: one batched `predict_proba` call on {s['batch']} images; pipeline: "
        f"{s['batch']} `analyze` calls one after the other; analyze_batch: one call for the {s['batch']}):",
        "",
        md_table(["what", "n", "p50 ms", "p95 ms", "images/s"], rows),
        "",
    ]
    for v, sp in (res.get("speedup_vs_torch") or {}).items():
        lines.append(f"- {v} speed-up over eager torch (ratio of p50s): "
                     + ", ".join(f"{k} {x}x" for k, x in sp.items()))  # fmt: skip
    gains = res["analyze_batch_vs_sequential"].items()
    lines += ["- analyze_batch over sequential analyze (ratio of p50s): "
              + ", ".join(f"{v} {x}x" for v, x in gains), ""]  # fmt: skip
    for v, t in res.get("targets", {}).items():
        lines.append(f"- Targets (issue #14), {v}: " + ", ".join(f"{k}: {_verdict(x)}" for k, x in t.items()))
    cuda = res["cuda"]
    if cuda.get("status") == "ok":
        lines += ["", "CUDA batched `predict_proba` throughput (images/s): "
                  + ", ".join(f"{k} {v}" for k, v in cuda["results"].items())]  # fmt: skip
    else:
        lines += ["", f"CUDA batched throughput: {cuda['status']} (not measured: no GPU lent to this task)."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with bench_workdir("medlens-bench-", args.work_dir, args.threads) as (work, load_before):
        from medlens.inference.runtime import configure_threads

        threads = configure_threads()  # torch's pool: the threads each ONNX Runtime session gets
        models_dir, models_desc = prepare_skin_models(args.models, work, args.tiny, args.v2_standins)
        paths, images_desc = example_images(args.images, max(8, args.batch))
        images = load_images(paths) if paths else synthetic_skin_images(max(8, args.batch))
        if not paths:
            images_desc = f"{len(images)} synthetic 200x150 dermoscopy-like images ({images_desc})"
        sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
        res: dict[str, Any] = {
            "benchmark": "inference",
            "command": command_line("benchmarks.inference", argv),
            "machine": machine_info(),
            "settings": {
                "repeats": args.repeats,
                "batch": args.batch,
                "batch_repeats": args.batch_repeats,
                "warmup": args.warmup,
                "block": args.block,
                "tta": not args.no_tta,
                "threads": threads,
                "variants": args.variants,
            },
            "models": models_desc,
            "images": f"{images_desc} (sizes {', '.join(sizes)})",
            "load_before": load_before,
        }
        if "onnx-int8" in args.variants:
            res["int8"] = prepare_int8(models_dir, images)
        res.update(measure(args, models_dir, images, res.get("int8")))
        res["targets"] = targets(res)
        res["cuda"] = cuda_throughput(models_dir, images)
        res["load_after"] = round(os.getloadavg()[0], 2)
    md = markdown(res)
    print(md)
    print(f"\nJSON: {write_json(args.json or RESULTS / f'{args.section}.json', res)}")
    if args.out:
        print(f"section {args.section!r} written to {update_section(args.out, args.section, md)}")
    return res


if __name__ == "__main__":
    main()
