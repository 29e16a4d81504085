"""Where the chest classifier looked: the mean share of its Grad-CAM inside the segmented lungs and heart
(``gradcam_inside_region``) on 40 films of each comparison set, without TTA, ONNX Runtime, one thread.

    .venv/bin/python configs/cpu/chest_cam_share.py MODELS_DIR

MODELS_DIR holds the chest-xray pipeline's bundles (e.g. ``models``, or a folder of links with a candidate
``chest-xray-cls``). The sets are those of ``configs/cpu/splits/chest_test_sets.py`` and
``jsrt_nodule_films.py`` under ``runs/``: the adults of the test split and the JSRT nodule films (the first 40
by name each) and the Kermany cohort test (40 drawn with seed 0). The chest issue asks for a share of .70.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from medlens.data.io import load_image
from medlens.pipelines.pipeline import load_pipelines

SETS = ("adult-test", "jsrt-nodule", "kermany-cohort-test")
EXTENSIONS = (".png", ".jpeg", ".jpg")


def films(name: str, n: int = 40) -> list[Path]:
    found = sorted(p for p in Path("runs", name, "images").rglob("*") if p.suffix.lower() in EXTENSIONS)
    return random.Random(0).sample(found, n) if name.startswith("kermany") else found[:n]


def main(models_dir: str) -> None:
    pipeline = load_pipelines(models_dir, runtime="onnx", num_threads=1)["chest-xray"]
    for name in SETS:
        shares, labels = [], []
        for path in films(name):
            result = pipeline.analyze(load_image(path), tta=False)
            labels.append("out of scope" if result.out_of_scope else str(result.label))
            if result.gradcam_inside_region is not None:
                shares.append(result.gradcam_inside_region)
        s = np.array(shares)
        counts = {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
        print(
            f"{name}: {len(s)} films with a Grad-CAM, mean share {s.mean():.3f}",
            f"(median {np.median(s):.3f}), below .5: {int((s < 0.5).sum())}; labels {counts}",
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models")
