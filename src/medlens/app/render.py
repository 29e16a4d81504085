"""Pure helpers behind the UI: overlay blending, tables and captions from stored records. No Gradio here.

Kept apart from ``ui.py`` so that they can be tested without building a page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

NOTICE = "Research tool, not a diagnosis."
PIPELINE_COLUMNS = ("name", "title", "modality", "segmenter", "classifier", "classes", "description")
PALETTE = np.array(
    [[0, 230, 118], [255, 64, 129], [41, 182, 246], [255, 193, 7], [171, 71, 188], [255, 112, 67]],
    dtype=np.float32,
)


def load_png(path: str | Path | None) -> np.ndarray | None:
    """A stored PNG as an (H, W) or (H, W, 3) uint8 array, or None."""
    if path is None:
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, 1) / (H, W, 3) uint8 -> (H, W, 3) uint8."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def blend(image: np.ndarray, mask: np.ndarray | None, opacity: float = 0.45) -> np.ndarray:
    """Colour the mask over the image and outline it.

    Args:
        image: (H, W[, C]) uint8.
        mask: (H, W) uint8, 0 = background; binary masks 0/255 (or 0/1), label maps 1..K get palette colours.
        opacity: 0 (image only) .. 1 (solid colour) inside the mask; the outline is always drawn.
    Returns:
        (H, W, 3) uint8.
    """
    rgb = to_rgb(image).astype(np.float32)
    if mask is None:
        return rgb.astype(np.uint8)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != rgb.shape[:2]:
        mask = np.asarray(Image.fromarray(mask).resize(rgb.shape[1::-1], Image.Resampling.NEAREST))
    labels = np.where(mask == 255, 1, mask).astype(np.int64)
    opacity = float(np.clip(opacity, 0.0, 1.0))
    for value in np.unique(labels[labels > 0]):
        region = labels == value
        colour = PALETTE[(value - 1) % len(PALETTE)]
        rgb[region] = (1 - opacity) * rgb[region] + opacity * colour
        edge = region & ~ndimage.binary_erosion(region, iterations=max(1, min(mask.shape) // 150))
        rgb[edge] = colour
    return rgb.clip(0, 255).astype(np.uint8)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)[:200]
    return "" if value is None else str(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def table(data: Mapping[str, Any] | None, key: str = "feature") -> pd.DataFrame:
    """A two-column table (``key``, value) of a (nested) mapping, values formatted for reading."""
    rows = [(k, _fmt(v)) for k, v in flatten(data or {}).items()]
    return pd.DataFrame(rows, columns=[key, "value"])


def short_date(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


def caption(record: Mapping[str, Any]) -> str:
    """ "<label> · <pipeline> · <date>" for a stored record."""
    label = record.get("label") or "no label"
    return f"{label} · {record['pipeline']} · {short_date(record['created'])}"


def choice(record: Mapping[str, Any]) -> tuple[str, str]:
    """(text shown, id) for a dropdown of analyses."""
    return f"{record['id'][:8]} · {caption(record)}", record["id"]


def advice_markdown(record: Mapping[str, Any] | None) -> str:
    """Recommendation, notice, uncertainty and out-of-scope warning as Markdown."""
    if record is None:
        return ""
    result = record["result"]
    parts = []
    if result.get("out_of_scope"):
        reason = result.get("scope_reason") or "the image does not look like what the pipeline was trained on"
        parts.append(f"**Out of scope:** {reason}")
    label = record.get("label")
    if label:
        parts.append(f"**Label:** {label}")
    if result.get("uncertainty") is not None:
        parts.append(f"**Uncertainty:** {result['uncertainty']:.3f}")
    if result.get("area_fraction") is not None:
        parts.append(f"**Segmented area:** {100 * result['area_fraction']:.1f}% of the image")
    parts.append(f"**Recommendation:** {result.get('recommendation') or '—'}")
    notice = (result.get("notice") or "").replace(NOTICE, "").strip()
    parts.append(f"> ⚠️ **{NOTICE}** {notice}".rstrip())
    return "\n\n".join(parts)


def label_counts_frame(counts: list[dict[str, Any]]) -> pd.DataFrame:
    """Counts per day and label (``HistoryStore.label_counts``) as a frame for a bar plot."""
    frame = pd.DataFrame(counts, columns=["day", "pipeline", "label", "count"])
    if frame.empty:
        return frame
    frame["label"] = frame["pipeline"] + " / " + frame["label"]
    return frame.groupby(["day", "label"], as_index=False)["count"].sum()


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Scalar validation metrics of a bundle (confusion matrices and curves left to the plots)."""
    flat = flatten(metrics)
    rows = [(k, _fmt(v)) for k, v in flat.items() if not isinstance(v, list | tuple)]
    return pd.DataFrame(rows, columns=["metric", "value"])


def pipelines_table(pipelines: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per pipeline (``AnalysisService.models()["pipelines"]``); lists joined, missing as "—"."""
    columns = [c for c in PIPELINE_COLUMNS if any(c in p for p in pipelines)]
    rows = [
        [", ".join(map(str, v)) if isinstance(v, list) else ("—" if v in (None, "") else str(v)) for v in row]
        for row in ([p.get(c) for c in columns] for p in pipelines)
    ]
    return pd.DataFrame(rows, columns=columns)
