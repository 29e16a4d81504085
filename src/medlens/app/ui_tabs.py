"""The components of the UI's three tabs (Analyse, History, Dashboard); the events are wired in ``ui.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from medlens.app import dashboard, render
from medlens.app.ui_handlers import ALL, HISTORY_PAGE, UiHandlers
from medlens.pipelines.routing import AUTO

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"]
IMAGE_HEIGHT = 380
FEATURE_WIDTHS = ["22%", "12%", "14%", "52%"]
PLOTS_PER_ROW = 3  # at 1280 px, five or six to a row left each plot about 185 px wide


def _inputs(c: dict[str, Any], h: UiHandlers, names: list[str], examples: list[list[str]]) -> None:
    c["file"] = gr.File(
        label="Image (PNG, JPEG, TIFF, BMP, DICOM)",
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
        info=_pipeline_info(names),
    )
    with gr.Row():
        c["clahe"] = gr.Checkbox(False, label="CLAHE contrast enhancement first")
        c["tta"] = gr.Checkbox(
            False,
            label="Flip test-time augmentation for every model",
            info="gives the uncertainty; unticked, each model runs it where its validation showed it helps",
            elem_id="tta",
        )
    c["run"] = gr.Button("Analyse", variant="primary", elem_id="analyse-button", interactive=bool(names))
    if examples:
        shown = gr.Examples(
            examples,
            inputs=[c["file"], c["pipeline"]],
            label="Examples",
            examples_per_page=12,
            example_labels=[f"{Path(p).name} ({name})" for p, name in examples],
            elem_id="examples",
        )
        # Gradio serves its cached copies of the example files for as long as the server runs, but does not
        # keep them (its delete_cache would take them after an hour): keep them, as it keeps static images
        c["file"].keep_in_cache.update(_cached_paths(shown))


def _picture(label: str, elem_id: str, height: int = IMAGE_HEIGHT) -> gr.Image:
    """A picture the app shows (not an input), scaled to fit its box."""
    return gr.Image(label=label, interactive=False, elem_id=elem_id, height=height,
                    elem_classes=["medlens-picture"])  # fmt: skip


def _cached_paths(examples: gr.Examples) -> set[str]:
    """The paths of Gradio's cached copies of an Examples' files (its processed samples)."""
    values = [v for sample in examples.non_none_processed_examples.values() for v in sample]
    return {v["path"] for v in values if isinstance(v, dict) and isinstance(v.get("path"), str)}


def _pipeline_info(names: list[str]) -> str | None:
    if not names:
        return "no models found in the models folder"
    if AUTO in names:
        return "auto: the modality check picks the pipeline for the image, and refuses what none takes"
    return None


def analyse_tab(h: UiHandlers, names: list[str], examples: list[list[str]]) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            _inputs(c, h, names, examples)
        with gr.Column(scale=5):
            with gr.Row(equal_height=False):  # the overlay is the image's size: the two line up
                with gr.Column(min_width=160):
                    c["original"] = _picture("Original", "original")
                with gr.Column(min_width=160):
                    c["overlay"] = _picture("Overlay", "overlay")
                    c["key"] = gr.HTML(elem_id="overlay-key")
            c["opacity"] = gr.Slider(
                0.0, 1.0, value=0.45, step=0.05, label="Overlay opacity", elem_id="opacity"
            )
            with gr.Row(equal_height=False):
                has_classifier = h.has_classifier(names[0] if names else None)
                with gr.Column(visible=has_classifier, elem_id="probabilities-box") as c["probs_box"]:
                    c["probs"] = gr.Label(label="Class probabilities (calibrated)", elem_id="probabilities")
                with gr.Column():
                    c["gradcam"] = _picture("Grad-CAM", "gradcam", IMAGE_HEIGHT - 60)
                    gr.HTML(render.colour_bar_html())
            c["advice"] = gr.Markdown(elem_id="advice")
            c["uncertainty"] = gr.HTML(elem_id="uncertainty")
            c["features"] = gr.Dataframe(
                render.features_frame({}),
                label="Features",
                interactive=False,
                wrap=True,
                elem_id="features",
                column_widths=FEATURE_WIDTHS,
            )
            c["mask_file"] = gr.File(label=render.MASK_LABEL, interactive=False, elem_id="mask-file")
    c["id"] = gr.State(None)
    return c


def _opened(c: dict[str, Any]) -> None:
    with gr.Accordion("Opened analysis", open=True):
        with gr.Row(equal_height=False):
            with gr.Column(min_width=160):
                c["original"] = gr.Image(label="Original", interactive=False, height=300)
            with gr.Column(min_width=160):
                c["overlay"] = gr.Image(label="Overlay", interactive=False, height=300)
                c["key"] = gr.HTML(elem_id="history-overlay-key")
            with gr.Column(min_width=160):
                c["gradcam"] = gr.Image(label="Grad-CAM", interactive=False, height=300)
        with gr.Row(equal_height=False):
            with gr.Column() as c["probs_box"]:
                c["probs"] = gr.Label(label="Class probabilities", elem_id="history-probabilities")
            with gr.Column():
                c["advice"] = gr.Markdown(elem_id="history-advice")
                c["uncertainty"] = gr.HTML(elem_id="history-uncertainty")
        c["features"] = gr.Dataframe(
            render.features_frame({}),
            label="Features",
            interactive=False,
            wrap=True,
            column_widths=FEATURE_WIDTHS,
        )
        with gr.Row():
            c["mask_file"] = gr.File(label=render.MASK_LABEL, interactive=False)
            c["delete"] = gr.Button("Delete this analysis", variant="stop")
    c["opened"] = gr.State(None)


def _compare(c: dict[str, Any]) -> None:
    gr.Markdown("### Compare two analyses")
    c["compare_note"] = gr.Markdown(elem_id="compare-note")
    with gr.Row():
        for side in ("a", "b"):
            with gr.Column():
                c[f"select_{side}"] = gr.Dropdown(
                    [], label=f"Analysis {side.upper()}", elem_id=f"compare-{side}"
                )
                caption = gr.Markdown()
                with gr.Row():
                    pictures = [
                        gr.Image(label=t, interactive=False, height=240) for t in ("Original", "Overlay")
                    ]
                key = gr.HTML(elem_id=f"compare-{side}-key")
                probs = gr.Label(label="Probabilities", elem_id=f"compare-{side}-probs")
                table = gr.Dataframe(
                    render.features_frame({}), label="Features", interactive=False, wrap=True
                )
                c[f"cmp_{side}"] = [*pictures, key, probs, table, caption]


def history_tab(names: list[str]) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["pipeline"] = gr.Dropdown([ALL, *names], value=ALL, label="Pipeline", elem_id="history-pipeline")
        c["label"] = gr.Dropdown([ALL], value=ALL, label="Label", elem_id="history-label")
        c["refresh"] = gr.Button("Refresh", elem_id="history-refresh")
    c["gallery"] = gr.Gallery(
        label="History (click one to open it)",
        columns=6,
        height="auto",
        allow_preview=False,
        object_fit="contain",
        elem_id="gallery",
    )
    with gr.Row():
        c["paging"] = gr.Markdown(elem_id="history-paging")
        c["more"] = gr.Button(f"Load {HISTORY_PAGE} more", elem_id="history-more", visible=False, size="sm")
    c["ids"], c["shown"] = gr.State([]), gr.State(HISTORY_PAGE)
    _opened(c)
    _compare(c)
    return c


def _bundle_panel(bundle: dict[str, Any], class_names: dict[str, str]) -> None:
    classes = ", ".join(map(str, bundle.get("classes") or []))
    with gr.Accordion(f"{bundle['name']} ({bundle.get('task') or 'unknown task'})", open=True):
        gr.Markdown(
            f"Classes: {classes or '—'} · input {bundle.get('input_size')} · "
            f"created {bundle.get('created') or '—'} · medlens {bundle.get('version') or '—'}"
        )
        if not bundle.get("evaluations"):
            gr.Markdown("_Validation figures only: this bundle was made before test-split evaluations._")
        gr.Dataframe(
            dashboard.metrics_frame(bundle, class_names),
            label="Metrics (validation, test, external)",
            interactive=False,
            elem_classes=["medlens-metrics"],
        )
        plots = list(bundle["plots"].items())
        for start in range(0, len(plots), PLOTS_PER_ROW):  # wide enough to read a confusion matrix's numbers
            row = plots[start : start + PLOTS_PER_ROW]
            with gr.Row():
                for name, path in row:
                    with gr.Column(scale=1, min_width=200):
                        gr.Image(str(path), label=dashboard.plot_title(name), interactive=False, height=400)
                for _ in range(PLOTS_PER_ROW - len(row)):  # a short last row keeps the plots' width
                    gr.Column(scale=1, min_width=200)


def dashboard_tab(h: UiHandlers) -> dict[str, Any]:
    service, c = h.service, {}
    models = service.models()
    if models["pipelines"]:
        table = render.pipelines_table(models["pipelines"])
        gr.Dataframe(
            table,
            label="Pipelines",
            interactive=False,
            wrap=True,
            column_widths=render.pipelines_widths(table),
        )
    if not service.bundles:
        gr.Markdown("No model bundles found in the models folder.")
    names: dict[str, str] = {}
    for p in models["pipelines"]:
        names.update(p.get("class_names") or {})
    for bundle in service.bundles:
        _bundle_panel(bundle, names)
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
