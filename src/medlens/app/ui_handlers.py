"""The UI's event functions on the shared :class:`~medlens.app.service.AnalysisService`; each returns the
values of the components it updates (in the order of :data:`DETAIL` for an opened analysis)."""

from __future__ import annotations

import html
import logging
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from medlens.app import render, security
from medlens.app.cleanup import TempJanitor
from medlens.app.service import AnalysisService
from medlens.errors import ImageReadError, ImageTooLargeError, MedlensError

logger = logging.getLogger(__name__)

ALL = "all"
HISTORY_PAGE = 24
DETAIL = (
    "original",
    "overlay",
    "key",
    "probs",
    "probs_box",
    "gradcam",
    "features",
    "advice",
    "uncertainty",
    "mask_file",
)
"""What an opened analysis fills, in this order (``key`` is the overlay's colour key as HTML, ``probs_box`` a
visibility update, ``mask_file`` an update of the download and of its label, which says what the mask's
values show)."""


def failure_reason(exc: MedlensError) -> str:
    """Why an upload could not be analysed, by error type: the reason alone for image errors (their message
    says ``cannot read <name>``; the UI names the file itself, in bold), the message for the others."""
    if isinstance(exc, ImageTooLargeError):
        return f"the image is too large: {exc.reason}"
    if isinstance(exc, ImageReadError):
        return f"the file is not a readable image ({exc.reason})"
    return str(exc)


def _all_to_none(value: str | None) -> str | None:
    return None if value in (None, ALL) else value


def _filters(pipeline: str | None, label: str | None) -> dict[str, Any]:
    """The history's filters as :meth:`AnalysisService.list` takes them; "out of scope"
    (`render.OUT_OF_SCOPE`) in the label filter picks the refused analyses."""
    if label == render.OUT_OF_SCOPE:
        return {"pipeline": _all_to_none(pipeline), "out_of_scope": True}
    return {"pipeline": _all_to_none(pipeline), "label": _all_to_none(label)}


class UiHandlers:
    """Analyse, re-blend, history (paged), compare, delete and the dashboard counts."""

    def __init__(
        self,
        service: AnalysisService,
        max_file_size: int,
        janitor: TempJanitor | None = None,
    ) -> None:
        self.service, self.max_file_size = service, max_file_size
        self.janitor = janitor or TempJanitor()
        service.delete_hooks.append(self.janitor.forget)

    # ------------------------------------------------------------------ analyse
    def analyze(
        self,
        file: str | None,
        pipeline: str | None,
        clahe: bool,
        tta: bool = False,
        opacity: float = 0.45,
    ) -> tuple:
        """Uploaded file -> (the :data:`DETAIL` values, analysis id).

        A failure is returned, not raised: every panel cleared, the advice panel saying which file could not
        be analysed and why (it stays until the next analysis; a toast says it too), the id None. Nothing is
        stored then. Bad input (:class:`~medlens.errors.MedlensError`) is told as such; anything else is an
        internal error, logged under an id that the message gives."""
        if not file:
            return self._failed(None, "upload an image (or pick an example) first")
        name = security.upload_name(file)
        try:
            data = self._read(Path(file))
            # ticked: flips for every model; unticked: each model as chosen on validation (DEFAULT_TTA)
            record = self.service.analyze_bytes(
                data, pipeline or None, bool(clahe), tta=True if tta else None, file_name=name or None
            )
        except MedlensError as exc:
            return self._failed(name, failure_reason(exc))
        except Exception as exc:
            error_id = security.log_internal_error(exc, "the UI's analysis")
            return self._failed(name, f"internal error (id {error_id}); the details are in the server's log")
        self.janitor.track(record["id"], file)
        return (*self.detail(record, opacity), record["id"])

    def _failed(self, name: str | None, reason: str) -> tuple:
        """The outputs of a failed analysis: the empty :data:`DETAIL` values with the message as the advice,
        and no analysis id (so the overlay slider redraws nothing)."""
        values = list(self.detail(None))
        values[DETAIL.index("advice")] = render.failure_markdown(name, reason)
        what = f"Could not analyse {name}" if name else "Nothing to analyse"
        gr.Warning(html.escape(f"{what}: {reason}"), title="Analysis failed")
        return (*values, None)

    def _read(self, path: Path) -> bytes:
        size = path.stat().st_size if path.exists() else -1
        if size < 0:
            raise MedlensError(
                "the uploaded file is gone (uploads are removed an hour after upload, when their analysis is "
                "deleted, and at a restart): upload it again"
            )
        if size > self.max_file_size:
            raise MedlensError(security.too_large_message(self.max_file_size))
        if size == 0:
            raise MedlensError("the file is empty")
        return path.read_bytes()  # the service checks the declared size before decoding

    def has_classifier(self, pipeline: str | None) -> bool:
        return bool(getattr(self.service.pipelines.get(pipeline or ""), "classes", None))

    def classifier_visibility(self, pipeline: str | None) -> dict[str, Any]:
        """Show the class-probability panel only for pipelines with a classifier."""
        return gr.update(visible=self.has_classifier(pipeline))

    def _expected_groups(self, pipeline: str) -> tuple[str, ...]:
        p = self.service.pipelines.get(pipeline)
        info = p.info() if callable(getattr(p, "info", None)) else {}
        return tuple(info.get("class_groups") or ())

    def detail(self, record: dict[str, Any] | None, opacity: float = 0.45) -> tuple:
        """The :data:`DETAIL` values of a record (empty ones for None; a refused one's: :meth:`_refusal`)."""
        if record is None:
            empty = gr.update(value=None, label=render.MASK_LABEL)
            return None, None, "", None, gr.update(), None, render.features_frame({}), "", "", empty
        if render.refused(record):
            return self._refusal(record)
        path = self.service.file_path
        image_path = path(record["id"], "image")
        probs = render.probabilities(record)
        return (
            str(image_path) if image_path else None,
            self.overlay(record["id"], opacity),
            render.key_html(record["result"]),
            probs,
            gr.update(visible=probs is not None),
            self._str(path(record["id"], "gradcam")),
            render.reading_features(record),
            render.advice_markdown(record, self._expected_groups(record["pipeline"])),
            render.uncertainty_html(record),
            gr.update(value=self._mask_download(record["id"]), label=render.mask_label(record["result"])),
        )

    def _refusal(self, record: dict[str, Any]) -> tuple:
        """The :data:`DETAIL` values of a refused image (:func:`render.refused`): the original and its
        refusal (every reason, :func:`render.advice_markdown`) only, the class-probability panel hidden. No
        overlay, colour key, Grad-CAM, probabilities, features, uncertainty or mask: what the record keeps
        of them is the API's, marked as no reading."""
        values = list(self.detail(None))
        values[DETAIL.index("original")] = self._str(self.service.file_path(record["id"], "image"))
        values[DETAIL.index("probs_box")] = gr.update(visible=False)
        values[DETAIL.index("advice")] = render.advice_markdown(record)
        return tuple(values)

    def overlay(self, analysis_id: str | None, opacity: float) -> np.ndarray | None:
        """The stored analysis's overlay redrawn at ``opacity`` (no model run): the API's and the CLI's
        drawing, with the measurement lines, at the image's size (the colour key is :func:`render.key_html`,
        not a strip under it). None for a refused image (:meth:`_refusal`)."""
        record = self.service.get(analysis_id) if analysis_id else None
        if record is None or render.refused(record):
            return None
        image = render.load_png(self.service.file_path(analysis_id, "image"))
        if image is None:
            return None
        mask_path = self.service.file_path(analysis_id, "mask")
        mask = render.load_png(mask_path) if mask_path else None
        result = record.get("result") or {}
        names = result.get("mask_names") or result.get("mask_classes") or ()  # older records: the classes
        return render.blend(image, mask, opacity, names, record.get("features"))

    def _mask_download(self, analysis_id: str) -> str | None:
        source = self.service.file_path(analysis_id, "mask")
        if source is None:
            return None
        target = self.janitor.folder / f"medlens-mask-{analysis_id[:12]}.png"
        shutil.copyfile(source, target)
        self.janitor.track(analysis_id, target)
        return str(target)

    @staticmethod
    def _str(path: Path | None) -> str | None:
        return str(path) if path else None

    # ------------------------------------------------------------------ history
    def history(self, pipeline: str | None, label: str | None, shown: int = HISTORY_PAGE) -> tuple:
        """(gallery items, ids, label filter, compare A choices, compare B choices, paging text, load-more
        button, shown): the ``shown`` newest analyses matching the filters."""
        shown = max(HISTORY_PAGE, int(shown or HISTORY_PAGE))
        records, total = self.service.list(page=1, page_size=shown, **_filters(pipeline, label))
        with_thumbs = [(r, p) for r in records if (p := self.service.file_path(r["id"], "thumb"))]
        labels = [ALL, render.OUT_OF_SCOPE, *self.service.store.labels(_all_to_none(pipeline))]
        choices = [render.choice(r) for r in records]
        return (
            [(str(p), render.caption(r)) for r, p in with_thumbs],
            [r["id"] for r, _ in with_thumbs],
            gr.Dropdown(choices=labels, value=label if label in labels else ALL),
            gr.Dropdown(choices=choices),
            gr.Dropdown(choices=choices),
            f"Showing {len(records)} of {total} analyses, newest first." if total else "No analyses yet.",
            gr.update(visible=len(records) < total),
            shown,
        )

    def load_more(self, pipeline: str | None, label: str | None, shown: int) -> tuple:
        return self.history(pipeline, label, int(shown or 0) + HISTORY_PAGE)

    def open_selected(self, ids: list[str], evt: gr.SelectData) -> tuple:
        """Gallery click -> (id, the :data:`DETAIL` values)."""
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        analysis_id = ids[index] if ids and 0 <= index < len(ids) else None
        record = self.service.get(analysis_id) if analysis_id else None
        return (analysis_id, *self.detail(record))

    def panel(self, analysis_id: str | None) -> tuple:
        """Compare panel: (original, overlay, colour key, probabilities, features, caption)."""
        record = self.service.get(analysis_id) if analysis_id else None
        if record is None:
            return None, None, "", None, render.features_frame({}), ""
        original, overlay, key, probs, *_ = self.detail(record)
        return original, overlay, key, probs, render.reading_features(record), f"**{render.caption(record)}**"

    def compare(self, a_id: str | None, b_id: str | None) -> tuple:
        """Compare panels A and B (:meth:`panel` each) and the note above them: analyses of two pipelines are
        not shown side by side (both panels empty, the note naming both pipelines)."""
        a, b = (self.service.get(i) if i else None for i in (a_id, b_id))
        refusal = render.compare_refusal(a, b) if a and b else None
        if refusal:
            return (*self.panel(None), *self.panel(None), refusal)
        return (*self.panel(a_id), *self.panel(b_id), "")

    def delete(self, analysis_id: str | None) -> tuple:
        """Delete the opened analysis (and the UI's copies of its files) -> (None, empty :data:`DETAIL`)."""
        if analysis_id and self.service.delete(analysis_id):
            gr.Info("Analysis deleted.")
        return (None, *self.detail(None))

    def counts(self) -> pd.DataFrame:
        return render.label_counts_frame(self.service.store.label_counts())
