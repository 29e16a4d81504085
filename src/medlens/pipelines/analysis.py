"""`Analysis`, the result of `medlens.pipelines.pipeline.Pipeline.analyze`, and its JSON / PNG helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.drawing import mask_values, png_bytes, viewable_mask
from medlens.jsonable import to_jsonable
from medlens.pipelines.advice import Finding
from medlens.pipelines.groups import group_fields
from medlens.pipelines.names import display_name
from medlens.pipelines.overlay import KeyEntry

FINDINGS_SEPARATOR = " | "  # between the findings of one image in a CSV cell
UNCERTAINTY_NOT_MEASURED = (
    "not measured (the model behind the result was not run on flipped copies of the image)"
)
UNCERTAINTY_NO_MODEL_RAN = "not measured (the image was refused before any model of the pipeline ran on it)"


def mask_legend(values: Mapping[Any, str]) -> str:
    """What the values of a mask PNG show, in words: "0 = background, 255 = skin lesion" (`mask_values`)."""
    return ", ".join(f"{value} = {name}" for value, name in values.items())


def uncertainty_note(uncertainty: float | None, models_ran: bool = True) -> str | None:
    """What a result says in place of an uncertainty it lacks, in the one wording of the JSON, the UI and the
    CSV: `UNCERTAINTY_NOT_MEASURED` when the models ran without flips, `UNCERTAINTY_NO_MODEL_RAN` when the
    modality or colour check refused the image first (`Analysis.models_ran`); None when it has one."""
    if uncertainty is not None:
        return None
    return UNCERTAINTY_NOT_MEASURED if models_ran else UNCERTAINTY_NO_MODEL_RAN


def stored_uncertainty_note(result: Mapping[str, Any]) -> str | None:
    """`uncertainty_note` of a stored result (`Analysis.to_dict`): the note it carries; a result stored
    before notes told the two cases apart gets the wording of models run without flips."""
    if result.get("uncertainty") is not None:
        return None
    return result.get("uncertainty_note") or UNCERTAINTY_NOT_MEASURED


def classification_view(
    label: str | None, probabilities: Mapping[str, float], result: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The classification of a result as the REST API (`medlens.app.views.analysis_view`) and batch
    prediction's JSON and CSV (`Analysis.classification`) give it: label, probabilities, class groups with
    their ``<group>_probability`` / ``<group>_flagged`` fields, and ``reading``, false for an image refused
    (``result["out_of_scope"]``): its probabilities are the classifier's raw output, kept for integrators, not
    a reading. ``result``: a stored result or an `Analysis`'s fields (``class_names``, ``groups``,
    ``learnt_from``, ``out_of_scope``); None without probabilities (no classifier, or it never ran)."""
    if not probabilities:
        return None
    names = result.get("class_names") or {}
    groups = result.get("groups") or []
    return {
        "label": label,
        "label_name": display_name(label, names),
        "reading": not result.get("out_of_scope", False),
        "probabilities": dict(probabilities),
        "class_names": names,
        "groups": groups,
        "learnt_from": result.get("learnt_from") or {},
        **group_fields(groups),
    }


@dataclass
class Analysis:
    """The result of one `Pipeline.analyze` call.

    Arrays (never in `to_dict`): ``mask`` ``(H, W)`` uint8 labels (binary 0/1) at the image's size,
    ``overlay`` and ``gradcam`` ``(H, W, 3)`` uint8 RGB (an overlay with a colour key has the key's strip
    under the image: ``(H + strip, W, 3)``). ``probabilities`` are calibrated (flip-TTA mean);
    ``uncertainty`` is the flip-TTA standard deviation of the predicted class's probability or, without a
    classifier, ``segmentation_uncertainty`` (the segmenter's mean TTA standard deviation over the predicted
    region); None when not measured (`uncertainty_note` says so). ``tta``: whether at least one test-time flip
    ran (a model trained under no flip runs none, nor does one that never ran). ``label`` is None when out of
    scope: ``scope_reasons`` lists every reason, in the order the checks ran, and ``scope_reason`` is all of
    them in one line (`medlens.pipelines.advice.scope_summary`); the probabilities and features measured
    before a refusal stay, raw, and are no reading (the web app shows none of them; its API and batch
    prediction mark them: `classification`).
    ``groups``: the classifier's class groups (e.g. "malignant") with their summed probability,
    validation-fitted threshold and flag (see `medlens.pipelines.groups.group_scores`; empty for bundles
    without groups). ``class_names``: full names of the class codes, from the pipeline YAML.
    ``modality``: what the modality check saw (`medlens.pipelines.modality.ModalityVerdict.describe`: class,
    in words, probabilities, the pipeline that takes it); None for a pipeline without the check.

    ``recommendation`` is the reading (the first advice rule that holds, or why the image is out of scope);
    ``findings`` every finding that applies besides it, most severe first (`medlens.pipelines.advice`).
    ``area_fraction`` is the share of the image the segmentation covers (all its structures together);
    ``area_fractions`` each structure's of a multi-class mask by class name ({} for a binary one), and then
    each of ``components`` names its ``structure`` (`medlens.inference.postprocess.structure_components`).
    ``gradcam_inside_region``: share of the Grad-CAM mass inside the segmented region, 0..1 (None without a
    segmenter or a Grad-CAM). ``mask_classes``: the segmenter's classes (label k of ``mask`` is
    ``mask_classes[k]``), ``mask_names`` the same as people read them (`names.region_names`: "skin lesion" for
    a generic "foreground"); ``colour_key``: what each colour of ``overlay`` shows. ``learnt_from``: per class
    of the classifier, the films it was learnt from (pipeline YAML; empty when it says nothing).
    ``input_notes``: what was done to the image before the analysis, in words (transparency flattened, a large
    image decoded reduced; `medlens.data.io.read_image`); ``original_size``: ``(H, W)`` of the file when it
    was decoded reduced (``image_size`` is what was analysed), else None.
    """

    id: str | None
    pipeline: str
    image_size: tuple[int, int]
    mask: np.ndarray | None
    overlay: np.ndarray | None
    area_fraction: float | None
    components: list[dict]
    label: str | None
    probabilities: dict[str, float]
    uncertainty: float | None
    out_of_scope: bool
    features: dict
    recommendation: str
    notice: str
    gradcam: np.ndarray | None
    timings_ms: dict[str, float]
    scope_reason: str | None = None
    scope_reasons: list[str] = field(default_factory=list)
    segmentation_uncertainty: float | None = None
    tta: bool = False
    groups: list[dict] = field(default_factory=list)
    class_names: dict[str, str] = field(default_factory=dict)
    modality: dict | None = None
    findings: list[Finding] = field(default_factory=list)
    gradcam_inside_region: float | None = None
    mask_classes: list[str] = field(default_factory=list)
    mask_names: list[str] = field(default_factory=list)
    colour_key: list[KeyEntry] = field(default_factory=list)
    learnt_from: dict[str, str] = field(default_factory=dict)
    input_notes: list[str] = field(default_factory=list)
    area_fractions: dict[str, float] = field(default_factory=dict)
    original_size: tuple[int, int] | None = None

    @property
    def probability(self) -> float | None:
        """Calibrated probability of ``label`` (None without a label)."""
        return self.probabilities.get(self.label) if self.label is not None else None

    @property
    def models_ran(self) -> bool:
        """Whether the pipeline's models ran on the image (a mask or probabilities came out); they do not on
        an image the modality or colour check refused."""
        return self.mask is not None or bool(self.probabilities)

    @property
    def mask_values(self) -> dict[int, str]:
        """What each value of the mask PNG (`mask_image`) shows, by name (`mask_names`):
        `medlens.drawing.mask_values` (0/255 from a binary segmenter, labels from a multi-class one); {}
        without a mask."""
        return {} if self.mask is None else mask_values(self.mask_names or self.mask_classes)

    @property
    def classification(self) -> dict[str, Any] | None:
        """Its `classification_view`, as the REST API gives it (``reading`` false when out of scope); None
        without probabilities."""
        return classification_view(self.label, self.probabilities, vars(self))

    def mask_image(self) -> np.ndarray | None:
        """The mask as stored and downloaded, ``(H, W)`` uint8 valued as `mask_values` says (None without)."""
        return None if self.mask is None else viewable_mask(self.mask, self.mask_classes)

    @property
    def label_name(self) -> str | None:
        """The label as people read it, e.g. "Melanoma (mel)" (the code when the pipeline names none)."""
        return display_name(self.label, self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: every field but the arrays, plus ``probability``, ``label_name``,
        ``uncertainty_note``, ``mask_values``, ``<group>_probability`` / ``<group>_flagged`` per class group
        and ``has_<array>`` flags."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("mask", "overlay", "gradcam")}
        out.update(group_fields(self.groups))
        out.update(
            probability=self.probability,
            label_name=self.label_name,
            uncertainty_note=uncertainty_note(self.uncertainty, self.models_ran),
            mask_values=self.mask_values,
            has_mask=self.mask is not None,
            has_overlay=self.overlay is not None,
            has_gradcam=self.gradcam is not None,
        )
        return to_jsonable(out)

    def csv_row(self) -> dict[str, Any]:
        """The analysis as a row of batch prediction's ``summary.csv``: the pipeline that analysed it
        (``auto`` when none took it), the modality the check saw (its class; empty without the check), the
        scalar results (with ``area_fraction_<structure>`` per structure), every reason it is out of scope
        (joined by `FINDINGS_SEPARATOR`), the reading, the findings (``severity: text``, joined the same way),
        the input notes (likewise) and the features that fit a cell as ``feature_<name>`` columns (structured
        ones stay in the JSON). ``reading`` is `classification`'s: false for a refused image, whose
        probabilities are no reading; empty without probabilities."""
        scalar = (bool, int, float, str, type(None))
        return {
            "pipeline": self.pipeline,
            "modality": (self.modality or {}).get("label"),
            "label": self.label,
            "label_name": self.label_name,
            "reading": (self.classification or {}).get("reading"),
            "probability": self.probability,
            **group_fields(self.groups),
            "area_fraction": self.area_fraction,
            **{f"area_fraction_{name}": share for name, share in self.area_fractions.items()},
            "uncertainty": self.uncertainty,
            "uncertainty_note": uncertainty_note(self.uncertainty, self.models_ran),
            "out_of_scope": self.out_of_scope,
            "scope_reasons": FINDINGS_SEPARATOR.join(self.scope_reasons),
            "tta": self.tta,
            "gradcam_inside_region": self.gradcam_inside_region,
            "recommendation": self.recommendation,
            "findings": FINDINGS_SEPARATOR.join(f"{f.severity}: {f.text}" for f in self.findings),
            "input_notes": FINDINGS_SEPARATOR.join(self.input_notes),
            **{f"feature_{k}": v for k, v in self.features.items() if isinstance(v, scalar)},
        }

    def mask_png(self) -> bytes | None:
        """The mask as PNG bytes (`mask_image`: binary 0/255, multi-class labels as they are), or None."""
        image = self.mask_image()
        return None if image is None else png_bytes(image)

    def overlay_png(self) -> bytes | None:
        """The segmentation overlay as PNG bytes, or None."""
        return None if self.overlay is None else png_bytes(self.overlay)

    def gradcam_png(self) -> bytes | None:
        """The Grad-CAM overlay as PNG bytes, or None."""
        return None if self.gradcam is None else png_bytes(self.gradcam)
