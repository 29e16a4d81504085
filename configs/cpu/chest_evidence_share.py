"""Where a chest classifier's evidence lies, on the crops it reads: the share inside the lungs and heart of
three maps of the last feature map ``A`` and the head's class weights ``W`` (40 films of each comparison set,
the same films as ``chest_cam_share.py``), for the predicted class ``y``:

- raw: ``ReLU(W_y . A)``, Grad-CAM of the raw logit;
- centred: ``ReLU((W_y - mean_k W_k) . A)``, Grad-CAM of the centred logit (what medlens draws);
- used: ``sum_k |(W_k - mean_j W_j) . A|``, every class's evidence as softmax reads it;

and the centred map's share inside the lung fields alone (the heart left out).

Each map is up-sampled to the input (224 px) and compared with the anatomy mask cropped as the input was. From
the repository root:

    .venv/bin/python configs/cpu/chest_evidence_share.py BUNDLE    # e.g. models/chest-xray-cls
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from medlens.data.io import load_image
from medlens.inference.explain import centred_weights
from medlens.inference.guided import guide_one
from medlens.inference.predictor import ClassificationPredictor, SegmentationPredictor
from medlens.spec import GuideMode

sys.path.insert(0, "configs/cpu")
from chest_cam_share import SETS, films  # the same films


def main(bundle: str) -> None:
    clf = ClassificationPredictor(bundle, runtime="torch", num_threads=1)
    seg = SegmentationPredictor("models/chest-anatomy", runtime="torch", num_threads=1)
    net = clf.model.eval()
    weights = net.get_classifier().weight.detach().float()
    centred_w = torch.from_numpy(centred_weights(weights.numpy()))
    size = tuple(clf.spec.input_size)
    for name in SETS:
        shares: dict[str, list[float]] = {"raw": [], "centred": [], "used": [], "centred, lungs only": []}
        for path in films(name):
            image = load_image(path, channels=clf.spec.in_channels)
            mask = seg.predict(image)
            region = guide_one(image, mask, GuideMode.BOTH, size, margin=clf.guide_margin)[..., -1] > 0
            lungs = np.isin(mask, [seg.classes.index("left_lung"), seg.classes.index("right_lung")])
            lungs = guide_one(255 * lungs.astype(np.uint8), mask, GuideMode.CROP, size, clf.guide_margin)
            lungs = lungs[..., 0] > 127  # cropped as the input was (the crop is the whole mask's)
            with torch.no_grad():
                feats = net.forward_features(clf.preprocess([image], [mask])).float()
                label = int(net.forward_head(feats).argmax(1))
            contrib = torch.einsum("kc,bchw->bkhw", weights, feats)[0]
            centred = torch.einsum("kc,bchw->bkhw", centred_w, feats)[0]  # the head medlens explains
            used = centred.abs().sum(0)
            maps = {"raw": contrib[label].relu(), "centred": centred[label].relu(), "used": used}
            maps["centred, lungs only"] = maps["centred"]
            for key, cam in maps.items():
                inside = torch.from_numpy(lungs if key.endswith("lungs only") else region).float()
                up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
                if float(up.sum()) > 0:  # an empty map has no share
                    shares[key].append(float((up * inside).sum() / up.sum()))
        figures = [f"{k} {np.mean(v):.3f} (n={len(v)})" if v else f"{k} empty" for k, v in shares.items()]
        print(name, ", ".join(figures))


if __name__ == "__main__":
    main(sys.argv[1])
