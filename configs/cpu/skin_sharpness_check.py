"""How far skin-cls's readings move when an image is softened as a larger upload is: 400 HAM10000 test
images (seed 0) as stored (150x200) and enlarged 2x (bicubic), then resized back by the model. From the
repository root:

    .venv/bin/python configs/cpu/skin_sharpness_check.py [BUNDLE]    # default models/skin-cls
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from medlens.inference.predictor import ClassificationPredictor

HAM = Path("../shared/datasets/ham10000")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[y == k] == k).mean() for k in np.unique(y)]))


def main(bundle: str = "models/skin-cls") -> None:
    model = ClassificationPredictor(bundle, runtime="onnx", num_threads=1)
    with (HAM / "labels.csv").open(newline="") as fh:
        labels = {row["id"]: row["label"] for row in csv.DictReader(fh)}
    test = json.loads(Path(bundle, "split.json").read_text())["test"]
    y, stored, enlarged = [], [], []
    for image_id in random.Random(0).sample(test, 400):
        img = Image.open(HAM / "images" / f"{image_id}.jpg").convert("RGB")
        big = img.resize((img.width * 2, img.height * 2), Image.Resampling.BICUBIC)
        a, b = model.predict_proba([np.asarray(img), np.asarray(big)])
        y.append(model.classes.index(labels[image_id]))
        stored.append(a)
        enlarged.append(b)
    y = np.array(y)
    pa, pb = (
        np.array([model.classes.index(c) for c in model.decide(np.array(p))]) for p in (stored, enlarged)
    )
    mel = model.classes.index("mel")
    print(
        f"n={len(y)}; balanced accuracy at the rule: stored {balanced_accuracy(y, pa):.3f}, "
        f"enlarged {balanced_accuracy(y, pb):.3f}"
    )
    print(
        f"called melanoma: stored {(pa == mel).sum()}, enlarged {(pb == mel).sum()} "
        f"(true melanomas {(y == mel).sum()}); melanoma recall {(pa[y == mel] == mel).mean():.3f} "
        f"against {(pb[y == mel] == mel).mean():.3f}; labels changed {(pa != pb).sum()}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
