"""The shipped modality bundle in front of the shipped pipelines, on the repository's own example images
(examples/, in git): each goes to its pipeline under ``auto``, a wrong pipeline refuses it naming the right
one, and a uniform or noise image is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.pipelines.pipeline import Pipeline, load_pipelines
from medlens.pipelines.routing import AUTO, ModalityRouter

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
EXAMPLES = {"skin": "skin", "polyp": "polyp", "chest-xray": "chest-xray"}  # examples/<folder> -> pipeline


@pytest.fixture(scope="module")
def shipped() -> dict[str, Pipeline]:
    return load_pipelines(MODELS)  # as the app and the CLI load them: one modality classifier shared


def _examples() -> list[tuple[str, np.ndarray]]:
    out = []
    for folder, pipeline in EXAMPLES.items():
        files = sorted((REPO / "examples" / folder).iterdir())
        out += [(pipeline, np.asarray(Image.open(f).convert("RGB"))) for f in files if f.suffix != ".md"]
    assert len(out) >= 6
    return out


def test_auto_sends_every_example_to_its_pipeline(shipped):
    router = ModalityRouter.from_pipelines(shipped)
    assert router is not None, "models/modality is shipped: every pipeline runs the check"
    examples = _examples()
    results = router.analyze_batch(shipped, [image for _, image in examples], tta=False)
    for (expected, _), a in zip(examples, results, strict=True):
        assert a.pipeline == expected, (expected, a.modality)
        assert a.modality["probability"] > 0.5


WRONG = [
    ("polyp", "skin", "use the polyp pipeline"),
    ("skin", "chest-xray", "use the skin pipeline"),
    ("chest-xray", "polyp", "use the chest-xray pipeline"),
]


@pytest.mark.parametrize(("image_of", "wrong", "words"), WRONG)
def test_a_wrong_pipeline_refuses_naming_the_right_one(shipped, image_of, wrong, words):
    image = next(img for p, img in _examples() if p == image_of)
    a = shipped[wrong].analyze(image, tta=False)
    assert a.out_of_scope and words in a.scope_reason, a.scope_reason
    assert any(f.source == "scope" for f in a.findings)


def test_uniform_and_noise_images_are_refused(shipped):
    router = ModalityRouter.from_pipelines(shipped)
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    results = router.analyze_batch(shipped, [np.full((300, 400, 3), 127, np.uint8), noise], tta=False)
    for a in results:
        assert a.pipeline == AUTO and a.out_of_scope and a.label is None
        assert "no medlens pipeline takes it" in a.scope_reason
