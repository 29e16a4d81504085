"""Gradio Blocks UI, mounted at ``/`` of the FastAPI app: Analyse, History and Dashboard tabs.

The event functions (:mod:`medlens.app.ui_handlers`) call :class:`~medlens.app.service.AnalysisService`
directly (the same service the REST API uses), never HTTP; the components are laid out in
:mod:`medlens.app.ui_tabs`. Pictures shown come from the history store by analysis id. The UI's temporary
files (uploads, mask downloads) are removed on delete, by age and at shutdown (:mod:`medlens.app.cleanup`);
never the files Gradio serves for components (examples, the dashboard's plots).
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from medlens.app import render, security
from medlens.app.cleanup import Sweeper, TempJanitor
from medlens.app.service import AnalysisService
from medlens.app.settings import ServerSettings
from medlens.app.ui_handlers import ALL, DETAIL, UiHandlers
from medlens.app.ui_tabs import analyse_tab, dashboard_tab, history_tab

__all__ = ["ALL", "UiHandlers", "build_ui", "find_examples", "mount_ui"]

logger = logging.getLogger(__name__)

EXAMPLE_TYPES = {".png", ".jpg", ".jpeg"}
CSS = """
#medlens-notice {border-left: 6px solid #d97706; background: #fff7ed; color: #7c2d12;
                 padding: 10px 16px; border-radius: 6px; font-size: 1.05em}
#medlens-notice p {margin: 0}
.medlens-picture img {object-fit: contain}
#gallery .caption-label, #gallery figcaption {white-space: normal !important; overflow: visible !important;
    text-overflow: clip !important; max-width: none !important; line-height: 1.25; font-size: 0.85em}
#examples td, #examples button, #upload .file-name {white-space: normal !important; overflow-wrap: anywhere}
.medlens-key {display: flex; flex-wrap: wrap; gap: 2px 14px; font-size: 0.85em}
.medlens-key .swatch {display: inline-block; width: 12px; height: 12px; margin-right: 5px; border-radius: 2px;
    vertical-align: middle}
.medlens-key .swatch.line {height: 3px}
#gradcam-colourbar .bar {height: 12px; border-radius: 4px}
#gradcam-colourbar .ticks, .medlens-uncertainty .ticks {display: flex; justify-content: space-between;
    font-size: 0.8em; opacity: 0.8}
.medlens-uncertainty .scale {position: relative; height: 10px; border-radius: 5px; margin: 6px 0 2px 0;
    background: linear-gradient(90deg, #16a34a 0%, #facc15 33%, #f97316 67%, #dc2626 100%)}
.medlens-uncertainty .marker {position: absolute; top: -4px; width: 4px; height: 18px; background: #111827;
    border-radius: 2px}
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


def build_ui(
    service: AnalysisService,
    examples_dir: str | Path | None = None,
    max_file_size: int | None = None,
    janitor: TempJanitor | None = None,
) -> gr.Blocks:
    """The medlens Blocks (not launched, not mounted); the pixel limit is the service's."""
    h = UiHandlers(service, max_file_size or ServerSettings().upload_bytes, janitor)
    names, choices = service.pipeline_names, service.choices  # choices: "auto" first when it is available
    with gr.Blocks(title="medlens", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# medlens\nSegment and classify 2D medical images · [REST API docs](docs)")
        gr.Markdown(BANNER, elem_id="medlens-notice")
        with gr.Tabs():
            with gr.Tab("Analyse", id="analyse"):
                a = analyse_tab(h, choices, find_examples(examples_dir, names))
            with gr.Tab("History", id="history"):
                hi = history_tab(choices)
            with gr.Tab("Dashboard", id="dashboard") as dashboard:
                d = dashboard_tab(h)
                d["tab"] = dashboard
        _wire_analyse(h, a)
        _wire_history(demo, h, a, hi)
        _wire_dashboard(demo, h, a, d)
    h.janitor.attach(demo)  # which files are uploads, and which (examples, plots) Gradio keeps serving
    demo.medlens_handlers = h
    return demo


PRIVATE = {"api_visibility": "private"}  # the REST API under /api/v1 is the programmatic interface


def _history_io(hi: dict) -> tuple[list, list]:
    inputs = [hi["pipeline"], hi["label"], hi["shown"]]
    outputs = [
        hi["gallery"],
        hi["ids"],
        hi["label"],
        hi["select_a"],
        hi["select_b"],
        hi["paging"],
        hi["more"],
        hi["shown"],
    ]
    return inputs, outputs


def _wire_analyse(h: UiHandlers, a: dict) -> None:
    a["run"].click(
        h.analyze,
        [a["file"], a["pipeline"], a["clahe"], a["tta"], a["opacity"]],
        [a[k] for k in DETAIL] + [a["id"]],
        concurrency_limit=4,
        **PRIVATE,
    )
    a["opacity"].input(
        h.overlay, [a["id"], a["opacity"]], a["overlay"], trigger_mode="always_last", **PRIVATE
    )
    a["pipeline"].change(h.classifier_visibility, a["pipeline"], a["probs_box"], **PRIVATE)


def _wire_history(demo: gr.Blocks, h: UiHandlers, a: dict, hi: dict) -> None:
    inputs, outputs = _history_io(hi)
    for trigger in (demo.load, hi["refresh"].click, hi["pipeline"].change, hi["label"].input):
        trigger(h.history, inputs, outputs, **PRIVATE)
    a["id"].change(h.history, inputs, outputs, **PRIVATE)  # a new analysis shows up in the history
    hi["more"].click(h.load_more, inputs, outputs, **PRIVATE)
    detail = [hi["opened"]] + [hi[k] for k in DETAIL]
    hi["gallery"].select(h.open_selected, hi["ids"], detail, **PRIVATE)
    hi["delete"].click(h.delete, hi["opened"], detail, **PRIVATE).then(h.history, inputs, outputs, **PRIVATE)
    panels = [*hi["cmp_a"], *hi["cmp_b"], hi["compare_note"]]
    for side in ("a", "b"):
        hi[f"select_{side}"].change(h.compare, [hi["select_a"], hi["select_b"]], panels, **PRIVATE)


def _wire_dashboard(demo: gr.Blocks, h: UiHandlers, a: dict, d: dict) -> None:
    for trigger in (demo.load, d["refresh"].click, d["tab"].select, a["id"].change):
        trigger(h.counts, None, d["counts"], **PRIVATE)


def mount_ui(
    app: FastAPI,
    service: AnalysisService,
    token: str | None = None,
    examples_dir: str | Path | None = None,
    max_file_size: int | None = None,
    root_path: str = "",
) -> gr.Blocks:
    """Build the UI and mount it at ``/`` of ``app`` (after the API routes). With a token, Gradio asks for a
    login whose password is the token. Its temporary files are swept every 5 minutes and removed at shutdown
    (``app.state.shutdown``). Returns the Blocks (also at ``app.state.demo``)."""
    janitor = TempJanitor()
    sweeper = Sweeper(janitor).start()
    demo = build_ui(service, examples_dir, max_file_size, janitor)
    demo.queue(default_concurrency_limit=4)
    allowed = [str(service.store.files.root.resolve()), str(janitor.folder)]
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
    if hasattr(app.state, "shutdown"):
        app.state.shutdown += [sweeper.stop, janitor.close]
    app.state.demo = demo
    return demo
