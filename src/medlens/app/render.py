"""Pure helpers behind the UI: overlay blending, tables and captions from stored records. No Gradio here.

Kept apart from ``ui.py`` so that they can be tested without building a page.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medlens.drawing import as_rgb, mask_labels
from medlens.pipelines.advice import DEFAULT_NOTICE, NOTICE_PREFIX
from medlens.pipelines.analysis import mask_legend, stored_uncertainty_note
from medlens.pipelines.describe import describe_features
from medlens.pipelines.heatmap import colour_bar_stops
from medlens.pipelines.names import display_name, region_name
from medlens.pipelines.overlay import draw_overlay
from medlens.pipelines.routing import AUTO

NOTICE = NOTICE_PREFIX
FEATURE_COLUMNS = ["Feature", "Value", "Unit", "What it means"]
MASK_LABEL = "Mask (PNG)"
OUT_OF_SCOPE = "out of scope"  # a refused result's label in the UI, and the history's filter for them
UNCERTAINTY_LEVELS = ((0.05, "low"), (0.15, "moderate"), (math.inf, "high"))
UNCERTAINTY_TICKS = (0.0, 0.05, 0.15, 0.3)  # equally spaced on the drawn scale (the last is its right end)
PIPELINE_COLUMNS = ("name", "title", "modality", "segmenter", "classifier", "classes", "description")
#: Relative column widths of the pipelines table: the description gets the room, so it wraps instead of
#: running off the side at 1280 px.
PIPELINE_WIDTHS = {"name": 7, "title": 12, "modality": 9, "segmenter": 10, "classifier": 10, "classes": 14,
                   "description": 38}  # fmt: skip


def load_png(path: str | Path | None) -> np.ndarray | None:
    """A stored PNG as an (H, W) or (H, W, 3) uint8 array, or None."""
    if path is None:
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)


def blend(
    image: np.ndarray,
    mask: np.ndarray | None,
    opacity: float = 0.45,
    classes: list[str] | tuple[str, ...] = (),
    features: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The pipeline's overlay redrawn at another opacity by the same function
    (:func:`medlens.pipelines.overlay.draw_overlay`): structures and measurement lines, without the key strip
    of the overlay PNG, so that the overlay lines up with the original and the Grad-CAM (the UI shows the key
    beside it, :func:`key_html`).

    Args:
        image: (H, W[, C]) uint8.
        mask: (H, W) uint8 as stored (:func:`medlens.drawing.viewable_mask`; read back by
            :func:`medlens.drawing.mask_labels`), 0 = background.
        opacity: 0 (image only) .. 1 (solid colour) inside the mask; the outline is always drawn.
        classes: the names of the segmenter's classes (the record's ``mask_names``, or for older records its
            ``mask_classes``; unknown: "label k" in the key).
        features: the record's features (the CTR lines are drawn from them).
    Returns:
        (H, W, 3) uint8, the image's size.
    """
    rgb = as_rgb(image)
    if mask is None:
        return rgb.copy()
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != rgb.shape[:2]:
        mask = np.asarray(Image.fromarray(mask).resize(rgb.shape[1::-1], Image.Resampling.NEAREST))
    return draw_overlay(rgb, mask_labels(mask), list(classes), features, float(opacity), key=False)[0]


def key_html(result: Mapping[str, Any] | None) -> str:
    """The overlay's colour key (the record's ``colour_key``) as HTML, shown under the UI's overlay
    (:func:`blend` draws none in the picture): a swatch and the name of each entry; "" without entries."""
    entries = [
        f'<span class="entry"><span class="swatch {html.escape(e.get("kind") or "")}" style="background: '
        f'{html.escape(e["colour"])}"></span>{html.escape(e["name"])}</span>'
        for e in (result or {}).get("colour_key") or []
    ]
    return f'<div class="medlens-key">{"".join(entries)}</div>' if entries else ""


def mask_label(result: Mapping[str, Any]) -> str:
    """The mask download's label: `MASK_LABEL` and what each of its values shows (when the record says)."""
    values = result.get("mask_values")
    return f"{MASK_LABEL}: {mask_legend(values)}" if values else MASK_LABEL


def short_date(iso: str) -> str:
    """ "2024-05-01 14:03 UTC" from a stored ISO time."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def refused(record: Mapping[str, Any] | None) -> bool:
    """Whether the record's image was refused (out of scope). The UI gives a refused image no reading: no
    class, probabilities or features (:func:`probabilities`, :func:`reading_features`), no overlay, Grad-CAM,
    mask or uncertainty (`medlens.app.ui_handlers.UiHandlers.detail`), its original and why it was refused
    only; the API keeps the raw ones for integrators, marked (`medlens.app.views.analysis_view`)."""
    return bool(((record or {}).get("result") or {}).get("out_of_scope"))


def label_name(record: Mapping[str, Any]) -> str:
    """The record's label as people read it ("Melanoma (mel)"), or why there is none."""
    if refused(record):
        return OUT_OF_SCOPE
    return display_name(record.get("label"), (record.get("result") or {}).get("class_names")) or "no label"


def caption(record: Mapping[str, Any]) -> str:
    """ "<label> · <pipeline> · <date and time>" for a stored record."""
    return f"{label_name(record)} · {record['pipeline']} · {short_date(record['created'])}"


def probabilities(record: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Class probabilities keyed by display name ("Melanoma (mel)"), or None without a classifier or for a
    refused image (:func:`refused`)."""
    if not record or not record.get("probabilities") or refused(record):
        return None
    names = (record.get("result") or {}).get("class_names")
    return {display_name(code, names): float(p) for code, p in record["probabilities"].items()}


def features_frame(features: Mapping[str, Any] | None) -> pd.DataFrame:
    """The features with names, units and explanations (``describe_features``) as a table."""
    rows = [[r["name"], r["value"], r["unit"], r["explanation"]] for r in describe_features(features or {})]
    return pd.DataFrame(rows, columns=FEATURE_COLUMNS)


def reading_features(record: Mapping[str, Any]) -> pd.DataFrame:
    """The record's features table (:func:`features_frame`); empty for a refused image (:func:`refused`)."""
    return features_frame(None if refused(record) else record.get("features"))


_VERDICTS = {
    True: "above the operating point: **possibly {name}**",
    False: "below the operating point",
    None: "not judged (out of scope)",
}


def group_markdown(result: Mapping[str, Any], expected: list[str] | tuple[str, ...] = ()) -> list[str]:
    """One line per class group (e.g. benign versus malignant); "not available" for expected groups that the
    model does not provide (older bundles: no threshold is invented)."""
    names = result.get("class_names") or {}
    lines, seen = [], set()
    for g in result.get("groups") or []:
        seen.add(g["name"])
        members = " + ".join(names.get(c, c) for c in g["classes"])
        verdict = _VERDICTS[g["flagged"]].format(name=g["name"])
        point = f"operating point {100 * g['threshold']:.1f}%, chosen on validation"
        if g.get("sensitivity") is not None and g.get("specificity") is not None:
            point += (
                f" (sensitivity {100 * g['sensitivity']:.0f}%, specificity {100 * g['specificity']:.0f}%)"
            )
        lines.append(
            f"**{g['name'].capitalize()} probability:** {100 * g['probability']:.1f}% ({members}), "
            f"{verdict}; {point}"
        )
    for name in expected:
        if name not in seen:
            lines.append(f"**{name.capitalize()} probability:** not available for this model")
    return lines


def compare_refusal(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Why records ``a`` and ``b`` are not shown side by side (None when they may be): analyses of two
    pipelines measure different things, so the message names both."""
    if a["pipeline"] == b["pipeline"]:
        return None

    def source(record: Mapping[str, Any]) -> str:
        name = record["pipeline"]
        return "no pipeline (pipeline=auto refused it)" if name == AUTO else f"the {name} pipeline"

    return (
        f"**Not compared:** A comes from {source(a)} and B from {source(b)}; their results do not measure "
        "the same things. Pick two analyses of one pipeline."
    )


def choice(record: Mapping[str, Any]) -> tuple[str, str]:
    """(text shown, id) for a dropdown of analyses."""
    return f"{record['id'][:8]} · {caption(record)}", record["id"]


def modality_line(record: Mapping[str, Any]) -> str | None:
    """What the modality check saw, and the pipeline ``auto`` chose, as Markdown (None without the check)."""
    result = record["result"]
    seen = result.get("modality")
    if not seen:
        return None
    p = seen.get("probability")
    text = f"**Modality check:** {seen.get('name') or seen.get('label')}" + (
        f" ({p:.2f})" if isinstance(p, int | float) else "")  # fmt: skip
    if result.get("auto") and record.get("pipeline") != "auto":
        text += f"; sent to the {record['pipeline']} pipeline (auto)"
    return text


def learnt_from_markdown(result: Mapping[str, Any], label: str | None) -> str | None:
    """Which films each class was learnt from (the predicted one first); None when the pipeline says not."""
    said = result.get("learnt_from") or {}
    if not said:
        return None
    names = result.get("class_names") or {}
    order = sorted(said, key=lambda code: code != label)
    rows = [f"- {display_name(code, names)}{' (this result)' if code == label else ''}: {said[code]}"
            for code in order]  # fmt: skip
    head = "**Learnt from** (films of other populations are outside the model's experience):"
    return head + "\n\n" + "\n".join(rows)


def area_markdown(result: Mapping[str, Any]) -> str | None:
    """The share of the image segmented: per structure for a multi-class mask (``area_fractions``: "left lung
    12.0%, right lung 11.5%, heart 6.1%", named as the record's ``mask_names``), else in all; None without a
    segmentation."""
    classes, names = result.get("mask_classes") or [], result.get("mask_names") or []
    shares = [f"{region_name(c, classes, names)} {100 * share:.1f}%" for c, share in
              (result.get("area_fractions") or {}).items()]  # fmt: skip
    if shares:
        return f"**Segmented area** (share of the image): {', '.join(shares)}"
    if result.get("area_fraction") is None:
        return None
    return f"**Segmented area:** {100 * result['area_fraction']:.1f}% of the image"


def evidence_markdown(result: Mapping[str, Any]) -> str | None:
    """How much of the Grad-CAM lies inside the segmented structures, or None when it was not measured."""
    share = result.get("gradcam_inside_region")
    if share is None:
        return None
    regions = [e["name"] for e in result.get("colour_key") or [] if e.get("kind") == "region"]
    where = ", ".join(regions) if regions else "the segmented region"
    return f"**Where the model looked:** {100 * share:.0f}% of the Grad-CAM lies inside {where}"


def input_markdown(result: Mapping[str, Any]) -> str | None:
    """What was done to the image before the analysis (``input_notes``: transparency flattened, decoded
    reduced), or None when nothing was."""
    notes = result.get("input_notes") or []
    if not notes:
        return None
    return "**About the image:**\n\n" + "\n".join(f"- {note[:1].upper()}{note[1:]}." for note in notes)


def findings_markdown(findings: list[Mapping[str, Any]]) -> str | None:
    """Every finding, most severe first, as a list (None without findings)."""
    if not findings:
        return None
    rows = [f"- **{str(f['severity']).capitalize()}:** {f['text']}" for f in findings]
    return "**Findings** (most severe first):\n\n" + "\n".join(rows)


def notice_markdown(notice: str | None) -> str:
    """The notice as a warning line that opens with `NOTICE` (said once)."""
    rest = (notice or "").replace(NOTICE, "").strip()
    return f"> ⚠️ **{NOTICE}** {rest}".rstrip()


def refusal_markdown(result: Mapping[str, Any]) -> list[str]:
    """A refused (out-of-scope) result: why (the recommendation says it; a record that did not gets its
    reason) and the generic notice; no model provenance, no measurement, no pipeline's own notice."""
    reason = result.get("scope_reason") or "it does not look like what the pipeline was trained on"
    recommendation = result.get("recommendation") or ""
    said = [] if reason in recommendation else [f"**Out of scope:** {reason}"]
    return [*said, f"**Recommendation:** {recommendation or '—'}", notice_markdown(DEFAULT_NOTICE)]


def advice_markdown(record: Mapping[str, Any] | None, expected_groups: tuple[str, ...] = ()) -> str:
    """What the modality check saw (and where ``auto`` sent the image), what was done to the image before the
    analysis, then the refusal of an image out of scope (:func:`refusal_markdown`), or the label and what it
    was learnt from, class groups, area, where the model looked, the reading (recommendation), every finding
    and the pipeline's notice, as Markdown."""
    if record is None:
        return ""
    result = record["result"]
    parts: list[str | None] = [modality_line(record), input_markdown(result)]
    if result.get("out_of_scope"):
        return "\n\n".join(p for p in parts + refusal_markdown(result) if p)
    if record.get("label"):
        parts.append(f"**Label:** {label_name(record)}")
    parts.append(learnt_from_markdown(result, record.get("label")))
    parts += group_markdown(result, expected_groups)
    parts.append(area_markdown(result))
    parts.append(evidence_markdown(result))
    parts.append(f"**Recommendation:** {result.get('recommendation') or '—'}")
    parts.append(findings_markdown(result.get("findings") or []))
    parts.append(notice_markdown(result.get("notice")))
    return "\n\n".join(p for p in parts if p)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&])")


def failure_markdown(name: str | None, reason: str) -> str:
    """What the advice panel says when an analysis failed: the file (as named by
    :func:`medlens.app.security.upload_name`) and why."""
    reason = _MARKDOWN_SPECIAL.sub(r"\\\1", reason.rstrip("."))  # as written: messages may hold <, _, *
    if not name:
        return f"**Nothing to analyse:** {reason}."
    return (
        f"**Could not analyse `{name}`:** {reason}.\n\nNothing was stored. Try another file "
        "(PNG, JPEG, TIFF, BMP or DICOM) or one of the examples."
    )


_CLASS_UNCERTAINTY = (
    "how much the probability of the result changes between the image and its flips (flip test-time "
    "augmentation over the flips the model was trained with: standard deviation over the views)"
)
_SEG_UNCERTAINTY = (
    "how much the segmentation's pixel probabilities change between the image and its flips (flip test-time "
    "augmentation), averaged over the found region"
)


def _uncertainty_text(result: Mapping[str, Any]) -> str:
    return _CLASS_UNCERTAINTY if result.get("probabilities") else _SEG_UNCERTAINTY


def uncertainty_html(record: Mapping[str, Any] | None) -> str:
    """The uncertainty with what it means and a scale from 0 (the flipped views agree) to high."""
    if record is None:
        return ""
    result = record["result"]
    value, note = result.get("uncertainty"), stored_uncertainty_note(result)
    if note is not None:
        return f'<div class="medlens-uncertainty"><b>Uncertainty:</b> {html.escape(note)}.</div>'
    level = next(name for limit, name in UNCERTAINTY_LEVELS if value < limit)
    left = 100 * float(np.interp(value, UNCERTAINTY_TICKS, np.linspace(0.0, 1.0, len(UNCERTAINTY_TICKS))))
    return (
        f'<div class="medlens-uncertainty"><b>Uncertainty: {value:.3f} ({level})</b> — '
        f"{html.escape(_uncertainty_text(result))}."
        f'<div class="scale"><span class="marker" style="left: calc({left:.1f}% - 2px)"></span></div>'
        '<div class="ticks"><span>0 · views agree</span><span>0.05</span><span>0.15 · unreliable</span>'
        f"<span>≥ {UNCERTAINTY_TICKS[-1]}</span></div></div>"
    )


def colour_bar_html() -> str:
    """The Grad-CAM colour scale (the same colours as the heat map) with its meaning."""
    stops = ", ".join(colour_bar_stops())
    return (
        f'<div id="gradcam-colourbar"><div class="bar" style="background: linear-gradient(90deg, {stops})">'
        '</div><div class="ticks"><span>low</span><span>where the model looked (Grad-CAM)</span>'
        "<span>high</span></div></div>"
    )


def label_counts_frame(counts: list[dict[str, Any]]) -> pd.DataFrame:
    """Counts per day and label (``HistoryStore.label_counts``) as a frame for a bar plot."""
    frame = pd.DataFrame(counts, columns=["day", "pipeline", "label", "count"])
    if frame.empty:
        return frame
    frame["label"] = frame["pipeline"] + " / " + frame["label"]
    return frame.groupby(["day", "label"], as_index=False)["count"].sum()


def pipelines_table(pipelines: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per pipeline (``AnalysisService.models()["pipelines"]``); lists joined, missing as "—"."""
    columns = [c for c in PIPELINE_COLUMNS if any(c in p for p in pipelines)]
    rows = [
        [", ".join(map(str, v)) if isinstance(v, list) else ("—" if v in (None, "") else str(v)) for v in row]
        for row in ([p.get(c) for c in columns] for p in pipelines)
    ]
    return pd.DataFrame(rows, columns=columns)


def pipelines_widths(frame: pd.DataFrame) -> list[str]:
    """CSS widths of ``pipelines_table``'s columns, in percent of the table."""
    weights = [PIPELINE_WIDTHS[c] for c in frame.columns]
    return [f"{100 * w / sum(weights):.1f}%" for w in weights]
