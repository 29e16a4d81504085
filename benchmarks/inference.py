"""Inference latency of every shipped pipeline: eager torch vs ONNX Runtime variants, side by side in one
process.

Pipelines (``--pipeline``, repeatable; default ``all``): each shipped pipeline YAML (``skin``, ``polyp``,
``chest-xray``, ...) with the bundles it names (segmenter and/or classifier, and the modality classifier of
its modality check, which every served pipeline runs first), copied from ``--models``, or random-weight
stand-ins of the shipped architectures (``models/<bundle>/bundle.json``) with ``--tiny`` or when ``--models``
lacks some of a pipeline's bundles. Example images (:data:`benchmarks.pipelines.IMAGE_SOURCES`):
HAM10000 for skin, Kvasir-SEG for polyp, paediatric (Kermany) and adult (Shenzhen) films for chest-xray, read
as the app reads uploads; synthetic colour (grey for chest-xray) images where the data sets are missing.

Variants (``--variants``):

* ``torch``: eager torch, Grad-CAM by MONAI backpropagation (the reference);
* ``onnx-before``: ONNX Runtime float32 as before issue #14: TTA views one call each, Grad-CAM by torch
  backpropagation;
* ``onnx``: float32, TTA views in one call, a classifier's Grad-CAM from its classification pass (graph output
  ``features``; a segmenter's Grad-CAM, in a pipeline without a classifier, is torch backpropagation in every
  variant);
* ``onnx-int8``: as ``onnx`` with a static int8 graph per bundle (:func:`benchmarks.pipelines.prepare_int8`:
  for bundles with a split and their data, the held-out check of `medlens.evaluation.int8` says whether
  serving may use them; random-weight stand-ins are timed only); the modality check stays fp32.

Measures per pipeline and variant:

* batch 1: ``Pipeline.analyze(image)`` p50/p95 latency and the median of every ``timings_ms`` stage the
  pipeline reports (``modality``, the modality check, included); flip TTA as each bundle chose (as served;
  ``--no-tta``: off); out-of-scope checks off (``scope=False``: the modality check runs and is timed, but
  refuses nothing) so that every stage runs on every image;
* batch N (``--batch``): the predictors' batched ``predict_proba`` on N images (no TTA, one call per model; a
  guided classifier gets its guided inputs), the pipeline on the same N images one ``analyze`` after the
  other, and one ``analyze_batch`` of the N;
* on CUDA, when there is one: batched ``predict_proba`` throughput (images/s) of the pipeline's predictors;
* targets: ONNX p50 <= 150 ms and >= 1.5x eager torch at batch 1.

torch and ONNX Runtime get the same threads (``--threads``, else all cores). Variants alternate in blocks
(ABBA order), so all see the same background load; warm-up calls are not timed. Output per pipeline: a
markdown section on stdout and, with ``--out BENCHMARKS.md``, in that file under the key ``--section`` for
skin (the historic key) and ``<section>-<pipeline>`` for the others (``inference-polyp``,
``inference-chest-xray``); a JSON file ``benchmarks/results/<key>.json`` (``--json``: the whole run in one
file instead).

    .venv/bin/python -m benchmarks.inference --threads 1 --repeats 30 --out BENCHMARKS.md
    .venv/bin/python -m benchmarks.inference --pipeline chest-xray --threads 1 --repeats 30 \\
        --out BENCHMARKS.md
    .venv/bin/python -m benchmarks.inference --pipeline skin --threads 1 --v2-standins \\
        --section inference-v2 --out BENCHMARKS.md
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
    machine_info,
    percentiles,
    ratio,
    update_section,
    write_json,
)
from benchmarks.inference_report import markdown
from benchmarks.pipelines import (
    build_pipeline,
    classifier_inputs,
    pipeline_images,
    pipeline_names,
    prepare_int8,
    prepare_pipeline,
    use_int8,
)

VARIANTS = ("torch", "onnx-before", "onnx", "onnx-int8")
TARGET_P50_MS = 150.0
TARGET_SPEEDUP = 1.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    names = pipeline_names()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", action="append", choices=[*names, "all"], default=None,
                   help="pipeline to time (repeatable; default: all; skin with --v2-standins)")  # fmt: skip
    p.add_argument("--models", default="models", help="folder with the bundles the pipelines name")
    p.add_argument("--tiny", action="store_true",
                   help="random-weight bundles of the shipped architectures (automatic for a pipeline whose "
                        "bundles --models lacks)")  # fmt: skip
    p.add_argument("--v2-standins", action="store_true",
                   help="random-weight bundles of the planned v2 skin architectures for the skin pipeline "
                        "(the default --pipeline is then skin)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=20, help="timed batch-1 analyses per variant")
    p.add_argument("--batch", type=int, default=8, help="images per batched call")
    p.add_argument("--batch-repeats", type=int, default=3, help="timed batched calls per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per variant before timing")
    p.add_argument("--block", type=int, default=5, help="consecutive calls of one variant before switching")
    p.add_argument("--images", action="append", default=[], metavar="[PIPELINE=]FOLDER",
                   help="folder of example images, for one pipeline or, without PIPELINE=, for all "
                        "(repeatable; default: the shared data sets)")  # fmt: skip
    p.add_argument("--no-tta", action="store_true", help="analyse without flip test-time augmentation")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and for ONNX Runtime (default: all cores)")  # fmt: skip
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--json", default=None, help="one results file for the run (default: one per pipeline, "
                                                "benchmarks/results/<section key>.json)")  # fmt: skip
    p.add_argument("--out", default=None, help="markdown file whose sections are replaced/appended")
    p.add_argument("--section", default="inference",
                   help="section key in --out: skin's; <section>-<pipeline> for the others")  # fmt: skip
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    chosen = args.pipeline or (["skin"] if args.v2_standins else ["all"])
    args.pipelines = names if "all" in chosen else list(dict.fromkeys(chosen))
    args.image_folders = image_folders(p, args.images, names)
    return args


def image_folders(p: argparse.ArgumentParser, values: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--images`` values -> ``{pipeline: folder}``; a bare folder is every pipeline's."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and name in names:
            out[name] = folder
        elif sep and "/" not in name:
            p.error(f"--images {value}: unknown pipeline {name!r} (valid: {', '.join(names)})")
        else:
            out.update(dict.fromkeys(names, value))
    return out


def section_key(section: str, pipeline: str) -> str:
    """The BENCHMARKS.md / results key of a pipeline: ``section`` for skin, ``<section>-<pipeline>`` else."""
    return section if pipeline == "skin" else f"{section}-{pipeline}"


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


def cuda_throughput(
    name: str, models_dir: Path, images: list[np.ndarray], batch_sizes: Sequence[int] = (8, 32)
) -> dict:
    """Batched ``predict_proba`` images/s of the pipeline's predictors on CUDA (torch; ONNX Runtime with its
    CUDA provider when installed)."""
    import torch

    from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor

    if not torch.cuda.is_available():
        return {"status": "not run: no GPU"}
    import onnxruntime as ort

    pipe = build_pipeline(name, models_dir, "torch")
    parts = [(pipe.config.segmenter, SegmentationPredictor, images),
             (pipe.config.classifier, ClassificationPredictor, classifier_inputs(pipe, images))]  # fmt: skip
    runtimes = ["torch"] + (["onnx"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    out: dict[str, Any] = {"status": "ok", "device": torch.cuda.get_device_name(0), "results": {}}
    for runtime in runtimes:
        for part, cls, inputs in (p for p in parts if p[0] is not None):
            for bs in batch_sizes:
                pred = cls(models_dir / part.bundle, runtime=runtime, device="cuda", batch_size=bs)
                batch = type(inputs)(inputs[i % len(inputs)] for i in range(bs))  # guided inputs stay marked
                for _ in range(3):
                    pred.predict_proba(batch)
                torch.cuda.synchronize()
                n, t0 = 10, time.perf_counter()
                for _ in range(n):
                    pred.predict_proba(batch)
                torch.cuda.synchronize()
                out["results"][f"{runtime} {part.bundle} b{bs}"] = round(
                    n * bs / (time.perf_counter() - t0), 1
                )
    return out


# ------------------------------------------------------------------------------------------------ measure
def build(variant: str, name: str, models_dir: Path, int8: dict[str, dict[str, Any]] | None) -> Any:
    """Pipeline ``name`` in one variant (see the module docstring), out-of-scope checks off."""
    pipe = build_pipeline(name, models_dir, "torch" if variant == "torch" else "onnx")
    if variant == "onnx-before":
        for predictor in (pipe.segmenter, pipe.classifier):
            if predictor is not None:
                predictor.batch_views = False
        if pipe.classifier is not None:
            pipe.classifier.onnx_cam = False
    elif variant == "onnx-int8":
        use_int8(pipe, int8 or {})
    return pipe


def measure(
    args: argparse.Namespace, name: str, models_dir: Path, images: list[np.ndarray], int8: dict | None
) -> dict[str, Any]:
    """Batch-1 and batched timings of every variant of pipeline ``name`` (see the module docstring)."""
    from medlens.pipelines.config import DEFAULT_TTA

    pipes = {v: build(v, name, models_dir, int8) for v in args.variants}
    tta = False if args.no_tta else DEFAULT_TTA
    n = len(images)

    def analyze(v: str) -> Callable[[int], Any]:
        return lambda i: pipes[v].analyze(images[i % n], tta=tta, scope=False)

    b1 = interleaved({v: analyze(v) for v in pipes}, args.repeats, args.warmup, args.block)
    batch = [images[i % n] for i in range(args.batch)]
    first = next(iter(pipes.values()))
    parts: dict[str, Callable[[Any], Any]] = {}
    if first.segmenter is not None:
        parts["segmenter"] = lambda p: p.segmenter.predict_proba(batch)
    if first.classifier is not None:
        cls_batch = classifier_inputs(first, batch)
        parts["classifier"] = lambda p: p.classifier.predict_proba(cls_batch)
    parts["pipeline"] = lambda p: [p.analyze(im, tta=tta, scope=False) for im in batch]
    parts["analyze_batch"] = lambda p: p.analyze_batch(batch, tta=tta, scope=False)
    bn: dict[str, list] = {}
    for part, fn in parts.items():
        group = {f"{v} {part}": (lambda _i, p=p, fn=fn: fn(p)) for v, p in pipes.items()}
        bn.update(interleaved(group, args.batch_repeats, 1, 1))
    return {**summarise(b1, bn, args.batch, list(parts)), **describe(first, tta)}


def describe(pipe: Any, tta: bool | None) -> dict[str, Any]:
    """How the pipeline runs: its modality check's bundle (None: no check), flip TTA per bundle, its guide
    mode, whose Grad-CAM it computes (or None)."""
    cfg = pipe.config
    models = ((cfg.segmenter, pipe.segmenter), (cfg.classifier, pipe.classifier))
    if cfg.classifier is not None:
        cam = "classifier" if cfg.classifier.gradcam else None
    else:
        cam = "segmenter" if cfg.segmenter.gradcam else None
    gate = pipe.modality_gate
    return {
        "modality_check": gate.classifier.name if gate is not None else None,
        "tta": {part.bundle: pipe.model_tta(model, tta) for part, model in models if model is not None},
        "guided": pipe.guide_mode,
        "gradcam_by": cam,
    }


def stage_names(timings: Sequence[dict[str, float]]) -> list[str]:
    """Every ``timings_ms`` key, in the order the pipeline reports them, ``total`` last."""
    keys = list(dict.fromkeys(k for t in timings for k in t))
    return [k for k in keys if k != "total"] + ["total"]


def summarise(b1: dict[str, list], bn: dict[str, list], batch: int, parts: Sequence[str]) -> dict[str, Any]:
    all_timings = [a.timings_ms for runs in b1.values() for _, a in runs]
    stages = stage_names(all_timings)
    out: dict[str, Any] = {"stages": stages, "batch1": {}, "batched": {}, "batched_parts": list(parts)}
    out["stages_zero"] = [s for s in stages if all(not t.get(s) for t in all_timings)]
    for v, runs in b1.items():
        timings = [a.timings_ms for _, a in runs]
        out["batch1"][v] = {
            "latency_ms": percentiles([ms for ms, _ in runs]),
            "stages_ms_p50": {
                s: round(float(np.median([t.get(s, 0.0) for t in timings])), 1) for s in stages
            },
            "gradcam_ran": sum(a.gradcam is not None for _, a in runs),
            "out_of_scope": sum(bool(a.out_of_scope) for _, a in runs),
        }
    for name, runs in bn.items():
        stats = percentiles([ms for ms, _ in runs])
        out["batched"][name] = {"latency_ms": stats, "images_per_s": round(batch * 1000.0 / stats["p50"], 2)}

    def p50(key: str) -> float:
        return out["batched"][key]["latency_ms"]["p50"]

    if "torch" in b1:
        t = out["batch1"]["torch"]["latency_ms"]
        out["speedup_vs_torch"] = {
            v: {
                "batch1_p50": ratio(t["p50"], out["batch1"][v]["latency_ms"]["p50"]),
                "batch1_p95": ratio(t["p95"], out["batch1"][v]["latency_ms"]["p95"]),
                **{f"batched_{part}": ratio(p50(f"torch {part}"), p50(f"{v} {part}")) for part in parts},
            }
            for v in b1
            if v != "torch"
        }
    out["analyze_batch_vs_sequential"] = {
        v: ratio(p50(f"{v} pipeline"), p50(f"{v} analyze_batch")) for v in b1
    }
    return out


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """Targets per ONNX variant: p50 <= 150 ms and >= 1.5x eager torch at batch 1 (issue #14, then every
    pipeline)."""
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


# ------------------------------------------------------------------------------------------------ main
def bench_pipeline(args: argparse.Namespace, name: str, work: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Prepare pipeline ``name``'s models and images, then measure it: its results record."""
    res: dict[str, Any] = {**run, "pipeline": name, "section": section_key(args.section, name),
                           "load_before": round(os.getloadavg()[0], 2)}  # fmt: skip
    models_dir, res["models"] = prepare_pipeline(name, args.models, work, args.tiny, args.v2_standins)
    images, images_desc = pipeline_images(name, args.image_folders.get(name), max(8, args.batch))
    sizes = sorted({"x".join(map(str, (im.shape[1], im.shape[0], im.shape[2]))) for im in images})
    res["images"] = f"{images_desc} (sizes W x H x channels: {', '.join(sizes)})"
    if "onnx-int8" in args.variants:
        pipe = build_pipeline(name, models_dir, "onnx")
        calibration = {pipe.config.segmenter.bundle: images} if pipe.segmenter is not None else {}
        if pipe.classifier is not None:
            calibration[pipe.config.classifier.bundle] = classifier_inputs(pipe, images)
        res["int8"] = prepare_int8(models_dir, calibration)
    res.update(measure(args, name, models_dir, images, res.get("int8")))
    res["targets"] = targets(res)
    res["cuda"] = cuda_throughput(name, models_dir, images)
    res["load_after"] = round(os.getloadavg()[0], 2)
    return res


def report(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, Any]:
    """Print one pipeline's section; write it to ``--out`` and, without ``--json``, its own JSON file."""
    md = markdown(res)
    print(md)
    if not args.json:
        print(f"JSON: {write_json(RESULTS / (res['section'] + '.json'), res)}")
    if args.out:
        print(f"section {res['section']!r} written to {update_section(args.out, res['section'], md)}\n")
    return res


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with bench_workdir("medlens-bench-", args.work_dir, args.threads) as (work, _load):
        from medlens.inference.runtime import configure_threads

        threads = configure_threads()  # torch's pool: the threads each ONNX Runtime session gets
        settings = {"repeats": args.repeats, "batch": args.batch, "batch_repeats": args.batch_repeats,
                    "warmup": args.warmup, "block": args.block, "tta": "off" if args.no_tta else "bundle",
                    "threads": threads, "variants": args.variants, "pipelines": args.pipelines}  # fmt: skip
        run = {"benchmark": "inference", "command": command_line("benchmarks.inference", argv),
               "machine": machine_info(), "settings": settings}  # fmt: skip
        results = {}
        for name in args.pipelines:  # each written when measured: a later failure keeps the earlier ones
            results[name] = report(args, bench_pipeline(args, name, work, run))
    out = {**run, "pipelines": results}
    if args.json:
        print(f"JSON: {write_json(args.json, out)}")
    return out


if __name__ == "__main__":
    main()
