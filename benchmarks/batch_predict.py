"""Batch prediction throughput: ``medlens predict skin <folder>`` one image at a time vs in batches.

Runs `medlens.pipelines.batch.predict_paths` in pipeline mode (skin pipeline, its shipped out-of-scope
checks, Grad-CAM, every output file written) over a folder of ``--n-images`` example images, with
``--batch-size 1`` (one image per model call, as before issue #14) and with ``--batch`` images per
`Pipeline.analyze_batch`, alternating (ABBA) for ``--repeats`` rounds; reports the images/s of each from the
``summary.json`` it writes, and their ratio.

    .venv/bin/python -m benchmarks.batch_predict --threads 1 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/batch_predict.py` as well as `python -m ...`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    bench_workdir,
    command_line,
    example_images,
    machine_info,
    machine_line,
    md_table,
    ratio,
    update_section,
    write_json,
)
from benchmarks.pipelines import models_label, prepare_skin_models


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models", help="folder with the skin-seg and skin-cls bundles")
    p.add_argument("--tiny", action="store_true", help="random-weight bundles of the shipped architectures")
    p.add_argument("--v2-standins", action="store_true", help="random-weight bundles of the v2 architectures")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="onnx")
    p.add_argument("--n-images", type=int, default=32, help="images in the folder")
    p.add_argument("--batch", type=int, default=8, help="images per batch in the batched run")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (one at a time, batched) in ABBA order")
    p.add_argument("--images", default=None, help="folder of example images (default: HAM10000)")
    p.add_argument("--threads", type=int, default=None, help="MEDLENS_NUM_THREADS for the models")
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/<section>.json)")
    p.add_argument("--out", default=None, help="markdown file whose section is replaced/appended")
    p.add_argument("--section", default="batch-predict", help="section key in --out")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
    return p.parse_args(argv)


def run_once(models_dir: Path, folder: Path, out: Path, runtime: str, batch_size: int) -> dict[str, Any]:
    from medlens.pipelines.batch import predict_paths

    shutil.rmtree(out, ignore_errors=True)
    summary = predict_paths(
        "skin", folder, out, runtime=runtime, batch_size=batch_size, models_dir=models_dir
    )
    import json

    return json.loads(summary.with_name("summary.json").read_text())


def markdown(res: dict[str, Any]) -> str:
    rows = [[k, len(v), float(np.median([r["images_per_s"] for r in v])),
             float(np.median([r["seconds"] for r in v]))] for k, v in res["runs"].items()]  # fmt: skip
    return "\n".join([
        f"## Batch prediction: `medlens predict skin <folder>` one at a time vs batches ({res['runtime']}; "
        f"{models_label(res['models'])})",
        "",
        f"What: `predict_paths` in pipeline mode (skin pipeline, shipped out-of-scope checks, Grad-CAM, all "
        f"output files written; models loaded inside the timed call) over {res['n_images']} images, with "
        f"batch size 1 and {res['batch']} (`Pipeline.analyze_batch`), alternating; images/s from the "
        "`summary.json` it writes (medians over the rounds).",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {machine_line(res['machine'])}; model threads {res['threads']}; load average (1 min) "
        f"before/after: {res['load_before']} / {res['load_after']}",
        f"- Models: {res['models']}",
        f"- Images: {res['images']}",
        "",
        md_table(["batch size", "rounds", "images/s", "seconds"], rows),
        "",
        f"Batched / one at a time (images/s): {res['speedup']}x",
    ]) + "\n"  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with bench_workdir("medlens-batch-", args.work_dir, args.threads) as (work, load_before):
        from medlens.inference.runtime import default_threads

        models_dir, models_desc = prepare_skin_models(args.models, work, args.tiny, args.v2_standins)
        paths, images_desc = example_images(args.images, args.n_images)
        folder = work / "inputs"
        folder.mkdir()
        for p in paths:
            shutil.copy2(p, folder / p.name)
        sizes = {"1": 1, str(args.batch): args.batch}
        runs: dict[str, list] = {k: [] for k in sizes}
        for i in range(args.repeats):
            for key in list(sizes) if i % 2 == 0 else list(sizes)[::-1]:
                runs[key].append(run_once(models_dir, folder, work / "out", args.runtime, sizes[key]))
        res: dict[str, Any] = {
            "benchmark": "batch_predict",
            "command": command_line("benchmarks.batch_predict", argv),
            "machine": machine_info(),
            "runtime": args.runtime,
            "threads": default_threads(),
            "n_images": len(paths),
            "batch": args.batch,
            "models": models_desc,
            "images": images_desc,
            "load_before": load_before,
            "runs": runs,
        }
        rates = {k: float(np.median([r["images_per_s"] for r in v])) for k, v in runs.items()}
        res["speedup"] = ratio(rates[str(args.batch)], rates["1"])
        res["load_after"] = round(os.getloadavg()[0], 2)
    md = markdown(res)
    print(md)
    print(f"JSON: {write_json(args.json or RESULTS / f'{args.section}.json', res)}")
    if args.out:
        print(f"section {args.section!r} written to {update_section(args.out, args.section, md)}")
    return res


if __name__ == "__main__":
    main()
