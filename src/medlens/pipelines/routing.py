"""``pipeline=auto``: each image goes to the pipeline of its modality, or is refused when none takes it.

:class:`ModalityRouter` runs the modality classifier the loaded pipelines share
(`medlens.pipelines.modality`) and picks, for the class it decides, the pipeline that takes that class; the
pipeline then analyses the image without running the classifier again. An image of a class no loaded
pipeline takes (fundus, other, or a modality whose pipeline is not loaded) gets a refused `Analysis`: out of
scope, pipeline ``"auto"``, no class, the reason naming what the image looks like, and that reason as its one
finding (source ``scope``, as for any image out of scope). The REST API, the UI (through
`medlens.app.service.AnalysisService`) and ``medlens predict auto`` use it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medlens.data.io import ImageRecord
from medlens.pipelines.advice import DEFAULT_NOTICE, out_of_scope_text, scope_finding
from medlens.pipelines.analysis import Analysis
from medlens.pipelines.modality import ModalityClassifier, ModalityVerdict, modality_reason
from medlens.pipelines.stages import as_image

AUTO = "auto"


class ModalityRouter:
    """The modality classifier and the pipeline that takes each of its classes (``routes``)."""

    def __init__(self, classifier: ModalityClassifier, routes: Mapping[str, str]) -> None:
        self.classifier, self.routes = classifier, dict(routes)

    @classmethod
    def from_pipelines(cls, pipelines: Mapping[str, Any]) -> ModalityRouter | None:
        """The router of the pipelines that have a modality check (`Pipeline.modality_gate`), by the first
        one's classifier (pipelines checked by another classifier are left out); None when none has one."""
        gates = [(n, g) for n, p in pipelines.items() if (g := getattr(p, "modality_gate", None)) is not None]
        if not gates:
            return None
        classifier = gates[0][1].classifier
        routes: dict[str, str] = {}
        for name, gate in gates:
            if gate.classifier is classifier:
                routes.setdefault(gate.expected, name)
        return cls(classifier, routes)

    def info(self) -> dict[str, Any]:
        """JSON-safe: the classifier bundle, its classes and the pipeline that takes each (None: refused)."""
        return {"bundle": self.classifier.name,
                "routes": {c: self.routes.get(c) for c in self.classifier.classes}}  # fmt: skip

    def classify(self, images: Sequence[np.ndarray | ImageRecord]) -> list[ModalityVerdict]:
        """The modality verdict of each image (see `as_image`; one batched call per chunk)."""
        return self.classifier.classify([as_image(image).array for image in images])

    def pipeline_for(self, seen: ModalityVerdict) -> str | None:
        """The pipeline that takes an image of class ``seen.label``, None when none does."""
        return self.routes.get(seen.label)

    def refusal(self, image: np.ndarray | ImageRecord, seen: ModalityVerdict, ms: float = 0.0) -> Analysis:
        """The out-of-scope result of an image no pipeline takes (``ms``: the classifier's time on it)."""
        reason, record = modality_reason(seen, self.routes), as_image(image)
        return Analysis(
            id=None, pipeline=AUTO, image_size=record.array.shape[:2], mask=None,
            overlay=None, area_fraction=None, components=[], label=None, probabilities={}, uncertainty=None,
            out_of_scope=True, features={}, recommendation=out_of_scope_text(reason, None),
            notice=DEFAULT_NOTICE, gradcam=None, timings_ms={"modality": round(ms, 2), "total": round(ms, 2)},
            scope_reason=reason, scope_reasons=[reason], modality=seen.describe(self.routes),
            findings=[scope_finding(reason)],
            input_notes=list(record.notes), original_size=record.original_size,
        )  # fmt: skip

    def analyze_batch(
        self,
        pipelines: Mapping[str, Any],
        images: Sequence[np.ndarray | ImageRecord],
        clahe: bool = False,
        gradcam: bool = True,
        tta: bool | None = None,
    ) -> list[Analysis]:
        """Classify the images' modality in one batch, then analyse each group with its pipeline's
        ``analyze_batch`` (``pipelines``: by name) and refuse the rest; results in the input order."""
        records = [as_image(image) for image in images]
        t0 = time.perf_counter()
        seen = self.classifier.classify([record.array for record in records])
        share = (time.perf_counter() - t0) * 1e3 / max(1, len(images))
        names = [self.pipeline_for(s) for s in seen]
        out: list[Analysis | None] = [None] * len(images)
        for name in dict.fromkeys(n for n in names if n is not None):
            picked = [i for i, n in enumerate(names) if n == name]
            results = pipelines[name].analyze_batch([images[i] for i in picked], clahe, gradcam, tta,
                                                    modality=[seen[i] for i in picked])  # fmt: skip
            for i, result in zip(picked, results, strict=True):
                result.timings_ms["modality"] = round(result.timings_ms.get("modality", 0.0) + share, 2)
                result.timings_ms["total"] = round(result.timings_ms.get("total", 0.0) + share, 2)
                out[i] = result
        return [r if r is not None else self.refusal(records[i], seen[i], share) for i, r in enumerate(out)]
