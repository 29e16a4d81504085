"""The commands behind ``medlens``: each one parses nothing, reads its ``args`` and calls one API function,
imported lazily so that ``medlens --help`` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from medlens.errors import ImageReadError, MedlensError
from medlens.folders import RunFolder

EXIT_BAD_INPUT = 2
EXIT_UNREADABLE_INPUT = 1  # predict: some input could not be read (every readable one was still predicted)


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
        config = config or str(RunFolder(resume_dir).config)
        if not Path(config).is_file():
            raise MedlensError(f"{resume_dir}: not a run folder (no {RunFolder.CONFIG})")
    if args.data:
        _existing(args.data, "data folder")
    if (args.new_head or args.freeze_encoder) and not args.from_bundle:
        raise MedlensError("--new-head and --freeze-encoder go with --from BUNDLE")
    overrides = _train_overrides(args)
    if resume_dir is not None:
        overrides += [f"out_dir={resume_dir.resolve().parent}", f"run_name={resume_dir.name}"]
    if args.from_bundle:
        from medlens.training.warmstart import config_from_bundle

        _existing(args.from_bundle, "bundle")
        overrides += ["new_head=true"] if args.new_head else []
        cfg = config_from_bundle(args.from_bundle, config, overrides, freeze_encoder=args.freeze_encoder)
    else:
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
    from medlens.evaluation.evaluate import choose_tta, evaluate

    _existing(args.model, "model (run folder or bundle)")
    if Path(args.out).exists() and not Path(args.out).is_dir():  # before the model and data are loaded
        raise MedlensError(f"--out {args.out}: exists and is not a folder; give a folder for the report")
    if args.choose_tta:
        if args.split != "val" or args.data is not None or args.tta is not None or args.record:
            raise MedlensError(
                "--choose-tta scores the bundle's own split (--split val), with and without TTA"
            )
        choice = choose_tta(args.model, args.out, split=args.split, runtime=args.runtime,
                            batch_size=args.batch_size, skip_bad=args.skip_bad,
                            device=args.device)  # fmt: skip
        _echo(json.dumps(choice, indent=2))
        return 0
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
        split_of=args.split_of,
        label_column=args.label_column,
        mask_dirs=args.mask_dirs,
        device=args.device,
        record=args.record,
    )
    summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    _echo(json.dumps(summary, indent=2))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from medlens.evaluation.compare import compare_reports, format_comparison
    from medlens.jsonable import write_json

    result = compare_reports(_existing(args.new, "report folder"), _existing(args.old, "report folder"))
    if args.out:
        write_json(args.out, result)
    _echo(format_comparison(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _configure_threads()
    from medlens.pipelines.batch import SUMMARY_JSON, predict_paths

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
    stats = json.loads(summary.with_name(SUMMARY_JSON).read_text())
    tta = {True: "on", False: "off"}.get(stats["tta"], "as chosen per model")
    _echo(f"{summary}: {stats['ok']} image(s) predicted in {stats['seconds']} s ({stats['images_per_s']} "
          f"images/s, TTA {tta}), {stats['errors']} unreadable (listed there)")  # fmt: skip
    for failure in stats["failed"]:  # worded as `main` words a single bad input: "error: cannot read ..."
        sys.stderr.write(f"error: {ImageReadError(failure['source'], failure['error'])}\n")
    return EXIT_UNREADABLE_INPUT if stats["failed"] else 0


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


SERVE_FLAGS = ("host", "port", "models_dir", "home", "token", "insecure", "runtime", "precision", "workers")


def cmd_serve(args: argparse.Namespace) -> int:
    from medlens.app.server import serve
    from medlens.app.settings import load_settings

    serve(load_settings({flag: getattr(args, flag) for flag in SERVE_FLAGS}))  # flags over MEDLENS_*
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
        check = cfg.modality_check
        if not missing and check is not None and check.bundle not in names:
            state += f", no modality check ({check.bundle} missing)"
        lines.append(f"  {name:<24} {state:<48} {cfg.title}")
    _echo("\n".join(lines))
    return 0


def _bundle_line(bundle: Any) -> str:
    """Name, task, network and the headline figure of each split it was scored on: Dice, or a classifier's
    balanced accuracy at its shipped rule (arg-max beside it) and its group flags' sensitivity and
    specificity."""
    spec = bundle.spec
    net = spec.arch + (f"/{spec.encoder}" if spec.encoder else "")
    figures = []
    for split, m in (bundle.evaluations or {"val": bundle.metrics}).items():
        if spec.is_segmentation:
            score = m.get("dice_mean", m.get("dice"))
            figures.append(f"{split} Dice {score:.3f}" if isinstance(score, int | float) else "")
            continue
        rule = (m.get("decision") or {}).get("balanced_accuracy")
        plain = m.get("balanced_accuracy")
        if isinstance(rule, int | float):
            text = f"{split} bal. acc. {rule:.3f} at the rule"
            text += f" ({plain:.3f} arg-max)" if isinstance(plain, int | float) else ""
        else:
            text = f"{split} bal. acc. {plain:.3f}" if isinstance(plain, int | float) else split
        for g in m.get("groups") or []:
            if isinstance(g.get("sensitivity"), int | float) and isinstance(
                g.get("specificity"), int | float
            ):
                text += f", {g['name']} sens {g['sensitivity']:.3f} / spec {g['specificity']:.3f}"
        figures.append(text)
    return f"  {bundle.name:<24} {spec.task.value:<15} {net:<28} " + "; ".join(f for f in figures if f)
