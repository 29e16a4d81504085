"""The BENCHMARKS.md section of one pipeline's inference results (`benchmarks.inference`): what was measured,
how, on what; batch-1 latency with per-stage medians, batched calls, speed-ups and the targets."""

from __future__ import annotations

from typing import Any

from benchmarks.common import machine_line, md_table
from benchmarks.pipelines import models_label


def _verdict(v: bool | None) -> str:
    return "met" if v else "not met" if v is not None else "n/a"


def _int8_lines(res: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in (res.get("int8") or {}).items():
        if r.get("checked"):
            lines.append(
                f"- int8 {name}: {r['split']} {r['metric']} fp32 {r['fp32']:.4f} vs int8 {r['int8']:.4f} "
                f"({r['delta']:+.4f}, n={r['n_images']}, calibrated on {r['n_calibration']} training "
                "images): "
                f"{'ACCEPTED (within' if r['accepted'] else 'REJECTED (beyond'} {r['tolerance']})"
            )
        else:
            lines.append(f"- int8 {name}: timed only, accuracy not checked ({r['reason']})")
    return lines


def _what(res: dict[str, Any]) -> str:
    """The "What:" paragraph: stages, TTA, guide, batched parts and variants of this pipeline."""
    s, name = res["settings"], res["pipeline"]
    stages = " + ".join(k for k in res["stages"] if k != "total")
    tta = (
        "off"
        if s["tta"] == "off"
        else "as each bundle chose: "
        + ", ".join(f"{b} {'on' if on else 'off'}" for b, on in res["tta"].items())
    )
    guided = f"; the classifier is guided by the segmentation ({res['guided']})" if res.get("guided") else ""
    gate, check = res.get("modality_check"), ""
    if gate:
        check = f"; the modality check first, as served (bundle {gate}, fp32 in every ONNX variant)"
    models = " and ".join(f"the {p}'s" for p in res["batched_parts"] if p in ("segmenter", "classifier"))
    guided_inputs = ", the classifier on its guided inputs" if res.get("guided") else ""
    cam = {
        "classifier": "; `onnx` fp32, TTA views in one call, Grad-CAM from the graph's `features` output; "
        "`onnx-int8` the same with static int8 graphs.",
        "segmenter": "; `onnx` fp32, TTA views in one call; `onnx-int8` the same with static int8 graphs. "
        "The Grad-CAM here is the segmenter's: torch backpropagation in every variant.",
    }.get(res["gradcam_by"], "; `onnx` fp32, TTA views in one call; `onnx-int8` the same with static int8 "
                               "graphs. No Grad-CAM in this pipeline.")  # fmt: skip
    return (
        f"What: `Pipeline.analyze` of the {name} pipeline ({stages}; flip TTA {tta}{guided}{check}; "
        "out-of-scope checks off so every stage runs) at the models' input sizes, batch 1; and at batch "
        f"{s['batch']} {models} batched `predict_proba` (no TTA, one call per model{guided_inputs}), the "
        f"pipeline over {s['batch']} images one `analyze` after the other and one `analyze_batch` of them. "
        "Warm-up excluded; variants alternate in blocks; torch and ONNX Runtime get the same threads. "
        "Variants: `torch` eager (MONAI Grad-CAM); `onnx-before` ONNX Runtime fp32 as before issue #14 (TTA "
        f"views one call each, Grad-CAM by torch backprop){cam}"
    )


def _batch1_table(res: dict[str, Any]) -> list[str]:
    stages = [k for k in res["stages"] if k != "total"]
    rows = []
    for v, r in res["batch1"].items():
        lat, st = r["latency_ms"], r["stages_ms_p50"]
        speed = (res.get("speedup_vs_torch") or {}).get(v, {}).get("batch1_p50")
        rows.append([v, lat["n"], lat["p50"], lat["p95"], speed, *(st[k] for k in stages)])
    head = ["variant", "n", "p50 ms", "p95 ms", "x torch (p50)", *(f"{k} p50" for k in stages)]
    lines = ["Batch 1, `Pipeline.analyze` latency and per-stage `timings_ms` (medians, ms):", "",
             md_table(head, rows), ""]  # fmt: skip
    zero = [k for k in res["stages_zero"] if k != "total"]
    if zero:
        why = "not run by this pipeline, or under 0.005 ms"
        lines += [f"Stages at 0 ms in every run ({why}): {', '.join(zero)}.", ""]
    return lines


def _batched_table(res: dict[str, Any]) -> list[str]:
    b = res["settings"]["batch"]
    rows = [
        [k, v["latency_ms"]["n"], v["latency_ms"]["p50"], v["latency_ms"]["p95"], v["images_per_s"]]
        for k, v in res["batched"].items()
    ]
    return [
        f"Batch {b} (predictors: one batched `predict_proba` call on {b} images; pipeline: {b} `analyze` "
        f"calls one after the other; analyze_batch: one call for the {b}):",
        "",
        md_table(["what", "n", "p50 ms", "p95 ms", "images/s"], rows),
        "",
    ]


def _targets_table(res: dict[str, Any]) -> list[str]:
    rows = []
    for v, t in res.get("targets", {}).items():
        p50 = res["batch1"][v]["latency_ms"]["p50"]
        speed = (res.get("speedup_vs_torch") or {}).get(v, {}).get("batch1_p50")
        verdicts = [_verdict(x) for x in t.values()]
        rows.append([v, p50, verdicts[0], speed, verdicts[1]])
    if not rows:
        return []
    head = ["variant", "p50 ms", "p50 <= 150 ms", "x torch (p50)", ">= 1.5x torch"]
    title = (
        f"Targets ({res['pipeline']} pipeline, batch 1, {res['settings']['threads']} thread(s) per runtime; "
        "issue #14 and its extension to every pipeline):"
    )
    return [title, "", md_table(head, rows), ""]


def markdown(res: dict[str, Any]) -> str:
    """The markdown section of one pipeline's results (see :func:`benchmarks.inference.bench_pipeline`)."""
    m, s = res["machine"], res["settings"]
    lines = [
        f"## Inference: {res['pipeline']} pipeline, eager torch vs ONNX Runtime ({s['threads']} thread"
        f"{'s' if s['threads'] > 1 else ''} per runtime; {models_label(res['models'])})",
        "",
        _what(res),
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {machine_line(m)}; threads per runtime: {s['threads']}; "
        f"load average (1 min) before/after: {res['load_before']} / {res['load_after']}",
        f"- Models: {res['models']}",
        f"- Images: {res['images']}",
        *_int8_lines(res),
        "",
        *_batch1_table(res),
        *_batched_table(res),
    ]
    for v, sp in (res.get("speedup_vs_torch") or {}).items():
        lines.append(f"- {v} speed-up over eager torch (ratio of p50s): "
                     + ", ".join(f"{k} {x}x" for k, x in sp.items()))  # fmt: skip
    gains = res["analyze_batch_vs_sequential"].items()
    lines += ["- analyze_batch over sequential analyze (ratio of p50s): "
              + ", ".join(f"{v} {x}x" for v, x in gains), "", *_targets_table(res)]  # fmt: skip
    cuda = res["cuda"]
    if cuda.get("status") == "ok":
        lines += ["CUDA batched `predict_proba` throughput (images/s): "
                  + ", ".join(f"{k} {v}" for k, v in cuda["results"].items())]  # fmt: skip
    else:
        lines += [f"CUDA batched throughput: {cuda['status']} (not measured: no GPU lent to this task)."]
    return "\n".join(lines) + "\n"
