"""Typed JSON bodies of the REST API (pydantic models): what ``/docs`` and ``/openapi.json`` describe."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medlens.pipelines.analysis import UNCERTAINTY_NO_MODEL_RAN, UNCERTAINTY_NOT_MEASURED

_OVERLAY = (
    "the mask drawn over the image with its measurement lines and, when it shows more than one thing, its "
    "colour key in a strip under the image (the PNG is then taller than the image); PNG"
)
_MASK = (
    "the mask as PNG: 0/255 from a binary segmenter, label k (class k of classes) from a multi-class one; "
    "mask_values says what each value shows"
)
_MASK_VALUES = (
    'what each value of the mask PNG shows, e.g. {"0": "background", "255": "skin lesion"} or {"0": '
    '"background", "1": "left lung", "2": "right lung", "3": "heart"}; {} for records stored before it'
)
_LEARNT_FROM = (
    "per class code, the films (population, hospital) the classifier learnt it from: a film of another "
    "population is outside that experience"
)
_READING = "the reading: the first advice rule that holds, or why the image is out of scope"
_NOT_MEASURED = (
    f'why there is no uncertainty ("{UNCERTAINTY_NOT_MEASURED}", or "{UNCERTAINTY_NO_MODEL_RAN}"); None when '
    "there is one"
)
_NOT_A_READING = (
    "false for an image refused (out_of_scope): its probabilities are the classifier's raw output, kept for "
    "integrators, not a reading (label and flags are None; the web app shows none of them)"
)
_INSIDE = (
    "share of the Grad-CAM inside the segmented region (chest films: the lungs and the heart), 0..1; None "
    "without a segmentation or a Grad-CAM"
)


class ColourKeyEntry(BaseModel):
    name: str = Field(description='what the colour shows, e.g. "heart" or "heart width (CTR)"')
    colour: str = Field(description="#rrggbb")
    kind: str = Field(description='"region" (a structure of the mask) or "line" (a measurement)')


class Segmentation(BaseModel):
    mask_url: str | None = Field(description=_MASK)
    mask_values: dict[str, str] = Field(default_factory=dict, description=_MASK_VALUES)
    overlay_url: str | None = Field(description=_OVERLAY)
    area_fraction: float | None = Field(
        description="share of the image the segmentation covers (all its structures together), 0..1"
    )
    area_fractions: dict[str, float] = Field(
        default_factory=dict,
        description="share of the image each structure covers, by class (multi-class masks, e.g. left_lung, "
        "right_lung, heart); {} for a binary mask",
    )
    components: list[dict[str, Any]] = Field(
        description="connected regions: area, bounding box, centroid; with a multi-class mask those of each "
        "structure on its own, each naming its 'structure'"
    )
    classes: list[str] = Field(default_factory=list, description="the segmenter's classes (label k: [k])")
    colour_key: list[ColourKeyEntry] = Field(
        default_factory=list, description="what each colour of the overlay shows, in the order drawn"
    )
    reading: bool = Field(
        True,
        description="false for an image refused (out_of_scope): the mask is the model's raw output, kept for "
        "integrators, not a reading (the web app shows none of it)",
    )


class GroupScore(BaseModel):
    name: str = Field(description='class group, e.g. "malignant"')
    classes: list[str] = Field(description="the class codes whose probabilities are summed")
    probability: float = Field(description="summed calibrated probability of the group")
    threshold: float = Field(description="operating point fitted on validation for the target sensitivity")
    flagged: bool | None = Field(description="probability >= threshold (None when out of scope)")
    target_sensitivity: float | None = None
    sensitivity: float | None = Field(None, description="sensitivity of the flag on validation")
    specificity: float | None = Field(None, description="specificity of the flag on validation")


class Classification(BaseModel):
    """Plus ``<group>_probability`` and ``<group>_flagged`` per class group (``malignant_probability``)."""

    model_config = ConfigDict(extra="allow")

    label: str | None = Field(description="class code of the decision (None when out of scope)")
    label_name: str | None = Field(None, description='the label as read by people, e.g. "Melanoma (mel)"')
    reading: bool = Field(True, description=_NOT_A_READING)
    probabilities: dict[str, float] = Field(description="calibrated probability per class code")
    class_names: dict[str, str] = Field(default_factory=dict, description="full name per class code")
    groups: list[GroupScore] = Field(
        default_factory=list, description="class groups with validation-fitted flags; [] for older models"
    )
    learnt_from: dict[str, str] = Field(default_factory=dict, description=_LEARNT_FROM)


class FindingView(BaseModel):
    text: str
    severity: str = Field(description="high, moderate or low; findings are listed most severe first")
    source: str = Field(description='the pipeline\'s name for the finding, e.g. "ctr_above_adult_limit"; '
                        '"scope" for an image out of scope')  # fmt: skip


class ModalityView(BaseModel):
    label: str = Field(description='the modality classifier\'s class, e.g. "endoscopy" or "other"')
    name: str = Field(description='the class in words, e.g. "a colonoscopy (endoscopy) frame"')
    probability: float | None = Field(description="its calibrated probability")
    probabilities: dict[str, float] = Field(description="calibrated probability per modality class")
    pipeline: str | None = Field(description="the pipeline that takes this modality (None: none does)")


class FeatureRow(BaseModel):
    key: str
    name: str = Field(description="human name")
    value: str = Field(description="formatted value ('—' when unknown)")
    unit: str
    explanation: str = Field(description="what it measures, or why it is blank")


class AnalysisView(BaseModel):
    id: str
    created: str = Field(description="ISO 8601, UTC")
    pipeline: str = Field(description='the pipeline that analysed it; "auto" when auto found none that fits')
    auto: bool = Field(False, description="pipeline=auto chose the pipeline by the image's modality")
    modality: ModalityView | None = Field(
        None, description="what the modality check saw (None: the pipeline has no modality check)"
    )
    source_format: str = Field(description="png, jpeg, tiff, bmp or dicom (sniffed from the content)")
    image_size: list[int] | None = Field(description="[height, width] analysed")
    original_size: list[int] | None = Field(
        None, description="[height, width] of the upload when it was decoded reduced (large images)"
    )
    input_notes: list[str] = Field(
        default_factory=list,
        description="what was done to the image before the analysis, in words: a transparent image laid on "
        "white, a large one decoded reduced (then original_size is set)",
    )
    clahe: bool
    tta: bool | None = Field(
        None, description="whether at least one test-time flip ran (a model trained under no flip runs none)"
    )
    image_url: str | None
    thumbnail_url: str | None
    segmentation: Segmentation | None
    classification: Classification | None
    features: dict[str, Any] = Field(
        description="raw feature values by key (for a refused image, out_of_scope: measured, not a reading)"
    )
    feature_details: list[FeatureRow] = Field(default_factory=list, description="the features for people")
    recommendation: str = Field(description=_READING)
    findings: list[FindingView] = Field(
        default_factory=list, description="every finding that applies besides the reading, most severe first"
    )
    notice: str
    uncertainty: float | None = Field(
        description="flip-TTA disagreement (0 = the views agree); None when not measured; for a refused "
        "image (out_of_scope) measured, not a reading"
    )
    uncertainty_note: str | None = Field(None, description=_NOT_MEASURED)
    out_of_scope: bool
    scope_reason: str | None = Field(description="scope_reasons in one line (None: in scope)")
    scope_reasons: list[str] = Field(
        default_factory=list, description="every reason it is out of scope, in the order the checks ran"
    )
    gradcam_url: str | None
    gradcam_inside_region: float | None = Field(None, description=_INSIDE)
    timings: dict[str, float] = Field(description="milliseconds per stage")


class AnalysisPage(BaseModel):
    items: list[AnalysisView]
    total: int
    page: int
    page_size: int


class Deleted(BaseModel):
    deleted: str


class Health(BaseModel):
    status: str = Field(description="ok, or starting while the models warm up")
    ready: bool = Field(True, description="every pipeline replica has run once (503 until then)")
    version: str
    pipelines: list[str]
    workers: dict[str, int] = Field(default_factory=dict, description="analyses at once, per pipeline")


class ModelsView(BaseModel):
    pipelines: list[dict[str, Any]]
    bundles: list[dict[str, Any]]
    auto: dict[str, Any] | None = Field(
        None,
        description="pipeline=auto: the modality bundle and the pipeline that takes each class; "
        "None when no modality classifier is loaded",
    )


class ErrorBody(BaseModel):
    detail: str


class UnknownNameBody(ErrorBody):
    valid: list[str] = Field(default_factory=list, description="the valid names, when a name was unknown")


class InternalErrorBody(ErrorBody):
    id: str = Field(description="error id; the traceback is in the server log under it")


def _error(description: str, model: type[BaseModel] = ErrorBody) -> dict[str, Any]:
    return {"model": model, "description": description}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("missing or invalid bearer token (when the server has a token)"),
    429: _error("too many failed tokens from this client; retry after the Retry-After seconds"),
    500: _error("internal error; the body carries an error id for the server log", InternalErrorBody),
}
ANALYZE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    400: _error("malformed multipart body (the reason is given)"),
    413: _error("upload larger than the byte limit, or image larger than the pixel limit (size given)"),
    422: _error(
        "unreadable image, unknown pipeline (with the valid names) or invalid form field", UnknownNameBody
    ),
    503: _error("no pipeline is loaded"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    404: _error("no such analysis, bundle or plot"),
}
