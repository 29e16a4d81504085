"""Gradio Blocks UI, mounted at ``/`` of the FastAPI app: Analyse, History and Dashboard tabs.

The event functions call :class:`~medlens.app.service.AnalysisService` directly (the same service the REST API
uses), never HTTP. Pictures shown come from the history store by analysis id.
"""

from __future__ import annotations

import html
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from fastapi import FastAPI

from medlens.app import render, security
from medlens.app.service import AnalysisService
from medlens.errors import MedlensError

logger = logging.getLogger(__name__)

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"]
EXAMPLE_TYPES = {".png", ".jpg", ".jpeg"}
PLOT_TITLES = {
    "confusion_matrix.png": "Confusion matrix",
    "roc.png": "ROC",
    "reliability.png": "Reliability diagram",
    "curves.png": "Training curves",
}
ALL = "all"
CSS = """
#medlens-notice {border-left: 6px solid #d97706; background: #fff7ed; color: #7c2d12;
                 padding: 10px 16px; border-radius: 6px; font-size: 1.05em}
#medlens-notice p {margin: 0}
"""
BANNER = (
    f"⚠️ **{render.NOTICE}** medlens shows what machine-learning models trained on public research data sets "
    "see in an image. They can be wrong, were not cleared for clinical use, and must not guide care."
)


def find_examples(
    examples_dir: str | Path | None, pipelines: list[str], per_pipeline: int = 6
) -> list[list[str]]:
    """``[[path, pipeline], ...]`` from ``<examples_dir>/<pipeline>/*.png|jpg`` for the loaded pipelines."""
    if examples_dir is None or not Path(examples_dir).is_dir():
        return []
    rows = []
    for name in pipelines:
        files = sorted(p for p in (Path(examples_dir) / name).glob("*") if p.suffix.lower() in EXAMPLE_TYPES)
        rows += [[str(p.resolve()), name] for p in files[:per_pipeline]]
    return rows


class UiHandlers:
    """The UI's event functions; each returns values for the components it updates."""

    def __init__(self, service: AnalysisService, max_file_size: int, max_pixels: int | None = None) -> None:
        self.service, self.max_file_size, self.max_pixels = service, max_file_size, max_pixels
        self._downloads = Path(tempfile.mkdtemp(prefix="medlens-ui-"))

    # ------------------------------------------------------------------ analyse
    def analyze(self, file: str | None, pipeline: str | None, clahe: bool, opacity: float) -> tuple:
        """Uploaded file -> (original, overlay, probabilities, Grad-CAM, features, advice, mask file, id)."""
        if not file:
            raise gr.Error("Upload an image (or pick an example) first.", print_exception=False)
        data = self._read(Path(file))
        try:
            record = self.service.analyze_bytes(data, pipeline or None, bool(clahe))
        except MedlensError as exc:
            raise gr.Error(html.escape(str(exc)), print_exception=False) from exc
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            logger.exception("internal error %s in the UI's analysis", error_id)
            raise gr.Error(f"internal error (id {error_id})", print_exception=False) from exc
        return (*self.detail(record, opacity), record["id"])

    def _read(self, path: Path) -> bytes:
        size = path.stat().st_size
        if size > self.max_file_size:
            raise gr.Error(html.escape(security.too_large_message(self.max_file_size)), print_exception=False)
        if size == 0:
            raise gr.Error("cannot read the upload: empty file", print_exception=False)
        data = path.read_bytes()
        pixels = security.declared_pixels(data)
        if self.max_pixels and pixels is not None and pixels > self.max_pixels:
            message = f"image too large ({pixels} pixels declared; the limit is {self.max_pixels})"
            raise gr.Error(message, print_exception=False)
        return data

    def detail(self, record: dict[str, Any] | None, opacity: float = 0.45) -> tuple:
        """(original, overlay, probabilities, Grad-CAM, features table, advice, mask file) of a record."""
        if record is None:
            return None, None, None, None, render.table({}), "", None
        path = self.service.file_path
        image_path = path(record["id"], "image")
        return (
            str(image_path) if image_path else None,
            self.overlay(record["id"], opacity),
            record["probabilities"] or None,
            self._str(path(record["id"], "gradcam")),
            render.table(record["features"]),
            render.advice_markdown(record),
            self._mask_download(record["id"]),
        )

    def overlay(self, analysis_id: str | None, opacity: float) -> np.ndarray | None:
        """Re-blend the stored image and mask at ``opacity`` (no model run)."""
        if not analysis_id:
            return None
        image = render.load_png(self.service.file_path(analysis_id, "image"))
        if image is None:
            return None
        mask_path = self.service.file_path(analysis_id, "mask")
        mask = render.load_png(mask_path) if mask_path else None
        return render.blend(image, mask, opacity)

    def _mask_download(self, analysis_id: str) -> str | None:
        source = self.service.file_path(analysis_id, "mask")
        if source is None:
            return None
        target = self._downloads / f"medlens-mask-{analysis_id[:12]}.png"
        shutil.copyfile(source, target)
        return str(target)

    @staticmethod
    def _str(path: Path | None) -> str | None:
        return str(path) if path else None

    # ------------------------------------------------------------------ history
    def history(self, pipeline: str | None, label: str | None, limit: int = 120) -> tuple:
        """(gallery items, ids shown, label filter, compare A choices, compare B choices)."""
        records, _ = self.service.list(
            page=1,
            page_size=limit,
            pipeline=None if pipeline in (None, ALL) else pipeline,
            label=None if label in (None, ALL) else label,
        )
        items = [
            (str(p), render.caption(r)) for r in records if (p := self.service.file_path(r["id"], "thumb"))
        ]
        ids = [r["id"] for r in records if self.service.file_path(r["id"], "thumb")]
        labels = [ALL, *self.service.store.labels(None if pipeline in (None, ALL) else pipeline)]
        choices = [render.choice(r) for r in records]
        return (
            items,
            ids,
            gr.Dropdown(choices=labels, value=label if label in labels else ALL),
            gr.Dropdown(choices=choices),
            gr.Dropdown(choices=choices),
        )

    def open_selected(self, ids: list[str], evt: gr.SelectData) -> tuple:
        """Gallery click -> (id, original, overlay, probabilities, Grad-CAM, features, advice, mask file)."""
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        analysis_id = ids[index] if ids and 0 <= index < len(ids) else None
        record = self.service.get(analysis_id) if analysis_id else None
        return (analysis_id, *self.detail(record))

    def panel(self, analysis_id: str | None) -> tuple:
        """Compare panel: (original, overlay, probabilities, features, caption)."""
        record = self.service.get(analysis_id) if analysis_id else None
        if record is None:
            return None, None, None, render.table({}), ""
        original, overlay, probs, _, features, _, _ = self.detail(record)
        return original, overlay, probs, features, f"**{render.caption(record)}**"

    def delete(self, analysis_id: str | None) -> tuple:
        if analysis_id and self.service.delete(analysis_id):
            gr.Info("Analysis deleted.")
        return (None, *self.detail(None))

    def counts(self) -> pd.DataFrame:
        return render.label_counts_frame(self.service.store.label_counts())


def _analyse_tab(h: UiHandlers, names: list[str], examples: list[list[str]]) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            c["file"] = gr.File(
                label="Image (PNG, JPEG, TIFF, BMP or DICOM)",
                file_types=UPLOAD_TYPES,
                type="filepath",
                elem_id="upload",
            )
            c["pipeline"] = gr.Dropdown(
                names,
                value=names[0] if names else None,
                label="Pipeline",
                interactive=bool(names),
                elem_id="pipeline",
                info=None if names else "no models found in the models folder",
            )
            c["clahe"] = gr.Checkbox(False, label="CLAHE contrast enhancement first")
            c["run"] = gr.Button(
                "Analyse", variant="primary", elem_id="analyse-button", interactive=bool(names)
            )
            if examples:
                gr.Examples(
                    examples, inputs=[c["file"], c["pipeline"]], label="Examples", examples_per_page=12
                )
        with gr.Column(scale=3):
            with gr.Row():
                c["original"] = gr.Image(label="Original", interactive=False, elem_id="original", height=360)
                c["overlay"] = gr.Image(label="Overlay", interactive=False, elem_id="overlay", height=360)
            c["opacity"] = gr.Slider(
                0.0, 1.0, value=0.45, step=0.05, label="Overlay opacity", elem_id="opacity"
            )
            with gr.Row():
                c["probs"] = gr.Label(label="Class probabilities (calibrated)", elem_id="probabilities")
                c["gradcam"] = gr.Image(label="Grad-CAM", interactive=False, elem_id="gradcam", height=300)
            c["advice"] = gr.Markdown(elem_id="advice")
            c["features"] = gr.Dataframe(
                render.table({}), label="Features", interactive=False, elem_id="features"
            )
            c["mask_file"] = gr.File(label="Mask (PNG, 0/255)", interactive=False, elem_id="mask-file")
    c["id"] = gr.State(None)
    return c


def _history_tab(names: list[str]) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["pipeline"] = gr.Dropdown([ALL, *names], value=ALL, label="Pipeline", elem_id="history-pipeline")
        c["label"] = gr.Dropdown([ALL], value=ALL, label="Label", elem_id="history-label")
        c["refresh"] = gr.Button("Refresh", elem_id="history-refresh")
    c["gallery"] = gr.Gallery(
        label="History (click one to open it)",
        columns=8,
        height="auto",
        allow_preview=False,
        fit_columns=False,
        object_fit="contain",
        elem_id="gallery",
    )
    c["ids"] = gr.State([])
    with gr.Accordion("Opened analysis", open=True):
        with gr.Row():
            c["original"] = gr.Image(label="Original", interactive=False, height=280)
            c["overlay"] = gr.Image(label="Overlay", interactive=False, height=280)
            c["gradcam"] = gr.Image(label="Grad-CAM", interactive=False, height=280)
        with gr.Row():
            c["probs"] = gr.Label(label="Class probabilities", elem_id="history-probabilities")
            c["advice"] = gr.Markdown(elem_id="history-advice")
        c["features"] = gr.Dataframe(render.table({}), label="Features", interactive=False)
        with gr.Row():
            c["mask_file"] = gr.File(label="Mask (PNG)", interactive=False)
            c["delete"] = gr.Button("Delete this analysis", variant="stop")
    c["opened"] = gr.State(None)
    gr.Markdown("### Compare two analyses")
    for side in ("a", "b"):
        c[f"cmp_{side}"] = []
    with gr.Row():
        for side in ("a", "b"):
            with gr.Column():
                c[f"select_{side}"] = gr.Dropdown(
                    [], label=f"Analysis {side.upper()}", elem_id=f"compare-{side}"
                )
                c[f"cmp_{side}_caption"] = gr.Markdown()
                with gr.Row():
                    c[f"cmp_{side}"].append(gr.Image(label="Original", interactive=False, height=240))
                    c[f"cmp_{side}"].append(gr.Image(label="Overlay", interactive=False, height=240))
                c[f"cmp_{side}"].append(gr.Label(label="Probabilities", elem_id=f"compare-{side}-probs"))
                c[f"cmp_{side}"].append(gr.Dataframe(render.table({}), label="Features", interactive=False))
                c[f"cmp_{side}"].append(c[f"cmp_{side}_caption"])
    return c


def _dashboard_tab(h: UiHandlers) -> dict[str, Any]:
    service, c = h.service, {}
    models = service.models()
    if models["pipelines"]:
        gr.Dataframe(
            render.pipelines_table(models["pipelines"]),
            label="Pipelines",
            interactive=False,
        )
    if not service.bundles:
        gr.Markdown("No model bundles found in the models folder.")
    for bundle in service.bundles:
        classes = ", ".join(map(str, bundle.get("classes") or []))
        with gr.Accordion(f"{bundle['name']} ({bundle.get('task') or 'unknown task'})", open=True):
            gr.Markdown(
                f"Classes: {classes or '—'} · input {bundle.get('input_size')} · "
                f"created {bundle.get('created') or '—'} · medlens {bundle.get('version') or '—'}"
            )
            gr.Dataframe(
                render.metrics_table(bundle["metrics"]), label="Validation metrics", interactive=False
            )
            if bundle["plots"]:
                with gr.Row():
                    for plot, path in bundle["plots"].items():
                        gr.Image(str(path), label=PLOT_TITLES[plot], interactive=False, height=300)
    gr.Markdown("### History: analyses per label over time")
    c["counts"] = gr.BarPlot(
        h.counts(),
        x="day",
        y="count",
        color="label",
        label="Analyses per day and label",
        elem_id="label-counts",
    )
    c["refresh"] = gr.Button("Refresh counts")
    return c


def build_ui(
    service: AnalysisService,
    examples_dir: str | Path | None = None,
    max_file_size: int | None = None,
    max_pixels: int | None = None,
) -> gr.Blocks:
    """The medlens Blocks (not launched, not mounted)."""
    h = UiHandlers(service, max_file_size or security.max_upload_bytes(), max_pixels)
    names = service.pipeline_names
    with gr.Blocks(title="medlens", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# medlens\nSegment and classify 2D medical images · [REST API docs](docs)")
        gr.Markdown(BANNER, elem_id="medlens-notice")
        with gr.Tabs():
            with gr.Tab("Analyse", id="analyse"):
                a = _analyse_tab(h, names, find_examples(examples_dir, names))
            with gr.Tab("History", id="history"):
                hi = _history_tab(names)
            with gr.Tab("Dashboard", id="dashboard") as dashboard_tab:
                d = _dashboard_tab(h)
                d["tab"] = dashboard_tab
        _wire(demo, h, a, hi, d)
    return demo


def _wire(demo: gr.Blocks, h: UiHandlers, a: dict, hi: dict, d: dict) -> None:
    """Connect the events. All are private: the REST API under /api/v1 is the programmatic interface."""
    private = {"api_visibility": "private"}
    detail = ["original", "overlay", "probs", "gradcam", "features", "advice", "mask_file"]
    history_in = [hi["pipeline"], hi["label"]]
    history_out = [hi["gallery"], hi["ids"], hi["label"], hi["select_a"], hi["select_b"]]
    a["run"].click(
        h.analyze,
        [a["file"], a["pipeline"], a["clahe"], a["opacity"]],
        [a[k] for k in detail] + [a["id"]],
        concurrency_limit=4,
        **private,
    ).success(h.history, history_in, history_out, **private).then(h.counts, None, d["counts"], **private)
    a["opacity"].input(
        h.overlay, [a["id"], a["opacity"]], a["overlay"], trigger_mode="always_last", **private
    )
    for trigger in (demo.load, hi["refresh"].click, hi["pipeline"].change, hi["label"].input):
        trigger(h.history, history_in, history_out, **private)
    hi["gallery"].select(h.open_selected, hi["ids"], [hi["opened"]] + [hi[k] for k in detail], **private)
    hi["delete"].click(h.delete, hi["opened"], [hi["opened"]] + [hi[k] for k in detail], **private).then(
        h.history, history_in, history_out, **private
    )
    for side in ("a", "b"):
        hi[f"select_{side}"].change(h.panel, hi[f"select_{side}"], hi[f"cmp_{side}"], **private)
    for trigger in (demo.load, d["refresh"].click, d["tab"].select):
        trigger(h.counts, None, d["counts"], **private)


def mount_ui(
    app: FastAPI,
    service: AnalysisService,
    token: str | None = None,
    examples_dir: str | Path | None = None,
    max_file_size: int | None = None,
    max_pixels: int | None = None,
    root_path: str = "",
) -> gr.Blocks:
    """Build the UI and mount it at ``/`` of ``app`` (after the API routes). With a token, Gradio asks for a
    login whose password is the token. Returns the Blocks (also at ``app.state.demo``)."""
    demo = build_ui(service, examples_dir, max_file_size, max_pixels)
    demo.queue(default_concurrency_limit=4)
    allowed = [str(service.store.files.root.resolve())]
    if examples_dir is not None and Path(examples_dir).is_dir():
        allowed.append(str(Path(examples_dir).resolve()))
    gr.mount_gradio_app(
        app,
        demo,
        path="/",
        auth=security.gradio_auth(token) if token else None,
        auth_message="medlens: log in with any user name and the API token as password." if token else None,
        allowed_paths=allowed,
        max_file_size=max_file_size,
        show_error=False,
        footer_links=["gradio", "settings"],
        run_history=False,
        theme=gr.themes.Soft(),
        css=CSS,
        root_path=root_path or None,
        ssr_mode=False,
        mcp_server=False,
    )
    app.state.demo = demo
    return demo
