"""Inference latency of the skin pipeline: eager torch vs ONNX Runtime, side by side in one process.

Measures, for ``runtime="torch"`` and ``runtime="onnx"``:

* batch 1: ``Pipeline.analyze(image)`` (segment with flip TTA, features, classify with flip TTA, Grad-CAM,
  advice) p50/p95 latency and the median of every ``timings_ms`` stage; out-of-scope checks are switched off
  so that every stage runs on every image (Grad-CAM always runs in torch, whatever the runtime);
* batch 8 (``--batch``): the predictors' batched ``predict_proba`` on 8 images (segmenter and classifier, no
  TTA, one call each) and the pipeline on the same 8 images one after the other (``analyze`` takes one image);
* on CUDA, when there is one: batched ``predict_proba`` throughput (images/s) of both predictors.

Runtimes alternate in blocks (ABBA order), so both see the same background load; warm-up calls are not
timed. Results: a markdown table on stdout, a JSON file, and with ``--out BENCHMARKS.md`` its section there.

    .venv/bin/python -m benchmarks.inference --repeats 20 --out BENCHMARKS.md
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
    percentiles,
    prepare_skin_models,
    ratio,
    skin_pipeline,
    synthetic_skin_images,
    update_section,
    write_json,
)

RUNTIMES = ("torch", "onnx")
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
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
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
def measure(args: argparse.Namespace, models_dir: Path, images: list[np.ndarray]) -> dict[str, Any]:
    pipes = {rt: skin_pipeline(models_dir, rt, scope=False) for rt in args.runtimes}
    tta = not args.no_tta
    n = len(images)

    def analyze(rt: str) -> Callable[[int], Any]:
        return lambda i: pipes[rt].analyze(images[i % n], tta=tta)

    b1 = interleaved({rt: analyze(rt) for rt in pipes}, args.repeats, args.warmup, args.block)
    batch = [images[i % n] for i in range(args.batch)]
    seg_b = {f"{rt} segmenter": (lambda _i, rt=rt: pipes[rt].segmenter.predict_proba(batch)) for rt in pipes}
    cls_b = {
        f"{rt} classifier": (lambda _i, rt=rt: pipes[rt].classifier.predict_proba(batch)) for rt in pipes
    }
    seq_b = {
        f"{rt} pipeline": (lambda _i, rt=rt: [pipes[rt].analyze(im, tta=tta) for im in batch]) for rt in pipes
    }
    bn: dict[str, list] = {}
    for group in (seg_b, cls_b, seq_b):
        bn.update(interleaved(group, args.batch_repeats, 1, 1))
    return summarise(b1, bn, args.batch)


def summarise(b1: dict[str, list], bn: dict[str, list], batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {"batch1": {}, "batched": {}}
    for rt, runs in b1.items():
        timings = [a.timings_ms for _, a in runs]
        out["batch1"][rt] = {
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
    rts = list(b1)
    if "torch" in rts and "onnx" in rts:
        t, o = out["batch1"]["torch"]["latency_ms"], out["batch1"]["onnx"]["latency_ms"]
        out["speedup_onnx_vs_torch"] = {
            "batch1_p50": ratio(t["p50"], o["p50"]),
            "batch1_p95": ratio(t["p95"], o["p95"]),
            **{
                f"batched_{part}": ratio(
                    out["batched"][f"torch {part}"]["latency_ms"]["p50"],
                    out["batched"][f"onnx {part}"]["latency_ms"]["p50"],
                )
                for part in ("segmenter", "classifier", "pipeline")
            },
        }
    if "onnx" in rts:
        p50 = out["batch1"]["onnx"]["latency_ms"]["p50"]
        speed = (out.get("speedup_onnx_vs_torch") or {}).get("batch1_p50")
        out["targets"] = {
            f"onnx_pipeline_p50_le_{TARGET_P50_MS:.0f}ms": bool(p50 <= TARGET_P50_MS),
            f"onnx_ge_{TARGET_SPEEDUP}x_torch": None if speed is None else bool(speed >= TARGET_SPEEDUP),
        }
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        f"## Inference: skin pipeline, eager torch vs ONNX Runtime ({s['threads']} thread"
        f"{'s' if s['threads'] > 1 else ''} per runtime)",
        "",
        "What: `Pipeline.analyze` of the skin pipeline (segment + features + classify + Grad-CAM + advice; "
        f"flip TTA {'on' if s['tta'] else 'off'}; out-of-scope checks off so every stage runs) at the "
        f"models' input sizes, batch 1; and at batch {s['batch']} the predictors' batched `predict_proba` "
        f"(no TTA, one call per model) and the pipeline over {s['batch']} images sequentially. Warm-up "
        "excluded; runtimes alternate in blocks. Grad-CAM runs in torch with either runtime.",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {machine_line(m)}; threads per runtime: {s['threads']}; "
        f"load average before/after: {res['load_before']} / {res['load_after']}",
        f"- Models: {res['models']}",
        f"- Images: {res['images']}",
        "",
    ]
    rows = []
    for rt, r in res["batch1"].items():
        lat, st = r["latency_ms"], r["stages_ms_p50"]
        rows.append([rt, lat["n"], lat["p50"], lat["p95"], *(st[k] for k in STAGES if k != "total")])
    head = ["runtime", "n", "p50 ms", "p95 ms", *(f"{k} p50" for k in STAGES if k != "total")]
    lines += [
        "Batch 1, `Pipeline.analyze` latency and per-stage `timings_ms` (medians, ms):",
        "",
        md_table(head, rows),
        "",
    ]
    rows = [
        [k, v["latency_ms"]["n"], v["latency_ms"]["p50"], v["latency_ms"]["p95"], v["images_per_s"]]
        for k, v in res["batched"].items()
    ]
    lines += [
        f"Batch {s['batch']} (predictors: one batched `predict_proba` call on {s['batch']} images; pipeline: "
        f"{s['batch']} `analyze` calls one after the other):",
        "",
        md_table(["what", "n", "p50 ms", "p95 ms", "images/s"], rows),
        "",
    ]
    sp = res.get("speedup_onnx_vs_torch")
    if sp:
        lines += [
            "ONNX Runtime speed-up over eager torch (ratio of p50s): "
            + ", ".join(f"{k} {v}x" for k, v in sp.items()),
            "",
        ]
    if res.get("targets"):
        lines += [
            'Targets (issue "Speed"): '
            + ", ".join(
                f"{k}: {'met' if v else 'not met' if v is not None else 'n/a'}"
                for k, v in res["targets"].items()
            ),
            "",
        ]
    cuda = res["cuda"]
    if cuda.get("status") == "ok":
        lines += [
            "CUDA batched `predict_proba` throughput (images/s): "
            + ", ".join(f"{k} {v}" for k, v in cuda["results"].items()),
            "",
        ]
    else:
        lines += [f"CUDA batched throughput: {cuda['status']} (not measured: no GPU lent to this task).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with bench_workdir("medlens-bench-", args.work_dir, args.threads) as (work, load_before):
        from medlens.inference.runtime import default_threads

        models_dir, models_desc = prepare_skin_models(args.models, work, args.tiny)
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
                "threads": default_threads(),
                "runtimes": args.runtimes,
            },
            "models": models_desc,
            "images": f"{images_desc} (sizes {', '.join(sizes)})",
            "load_before": load_before,
        }
        res.update(measure(args, models_dir, images))
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
