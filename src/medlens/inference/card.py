"""README.md model card for a bundle: description, data, validation metrics + CIs, intended use, limitations,
how to reproduce. Split out of ``medlens.inference.bundle``, which re-exports ``write_model_card``."""

from __future__ import annotations

from pathlib import Path

from medlens.errors import MedlensError
from medlens.folders import BundleFolder
from medlens.spec import Mode, ModelSpec

_DEFAULT_INTENDED_USE = (
    "Research and teaching: {task} of 2D images like those it was trained on ({data}). It is not a medical "
    "device and must not be used to diagnose, treat or triage patients; a clinician reads every image."
)
_DEFAULT_LIMITATIONS = (
    "- Validated only on the validation split listed above, drawn from the same source as the training data; "
    "expect lower accuracy on other scanners, clinics, populations and image qualities.\n"
    "- Images are resized to {size} without keeping the aspect ratio; very small structures may be lost.\n"
    "- Confidence intervals are bootstrap intervals over images of one split and do not cover data shift."
)


def _metric_rows(metrics: dict) -> list[tuple[str, float | int, tuple[float, float] | None]]:
    """Scalar metrics + CIs: flat ``x``, ``x_ci_low``, ``x_ci_high`` (``x_mean`` -> ``x_ci_*``) or nested."""
    rows = []
    for key, value in metrics.items():
        if key.endswith(("_ci_low", "_ci_high")):
            continue
        if isinstance(value, dict) and isinstance(value.get("mean", value.get("value")), int | float):
            ci = value.get("ci") or [value.get("ci_low"), value.get("ci_high")]
            value = value.get("mean", value.get("value"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            base = key[: -len("_mean")] if key.endswith("_mean") else key
            ci = [
                metrics.get(f"{base}_ci_low", metrics.get(f"{key}_ci_low")),
                metrics.get(f"{base}_ci_high", metrics.get(f"{key}_ci_high")),
            ]
        else:
            continue
        has_ci = isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(c, int | float) for c in ci)
        rows.append((key, value, (float(ci[0]), float(ci[1])) if has_ci else None))
    return rows


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _card_sections(meta: dict) -> dict[str, str]:
    spec, training = ModelSpec.from_dict(meta["spec"], BundleFolder.META), meta["training"]
    size = "x".join(str(s) for s in spec.input_size)
    data = ", ".join(training.get("data_roots") or []) or "unrecorded data"
    sections = {
        "Description": (
            f"A medlens {spec.task} model ({spec.mode}): `{spec.arch}`"
            + (f" with a `{spec.encoder}` encoder" if spec.is_segmentation else "")
            + f", input {size}, {spec.in_channels} channel(s). "
            + f"Classes: {', '.join(spec.classes)}."
        ),
        "Intended use": _DEFAULT_INTENDED_USE.format(task=spec.task, data=data),
    }
    splits = ", ".join(f"{k} {v}" for k, v in (training.get("split_sizes") or {}).items()) or "unrecorded"
    sections["Data"] = (
        f"- Data: {data}\n- Split (images): {splits}\n"
        f"- Epochs trained: {training.get('epochs_trained')}; best epoch: {training.get('best_epoch')}\n"
        f"- Normalisation: mean {spec.mean}, std {spec.std}"
    )
    if meta.get("tta_choice"):
        c = meta["tta_choice"]
        sections["Data"] += (
            f"\n- Flip test-time augmentation by default: {'on' if c['tta'] else 'off'} ({c['metric']} on "
            f"the {c['split']} split: {c['without']:.4f} without, {c['with']:.4f} with)"
        )
    if training.get("lineage"):
        sections["Data"] += "\n" + _lineage_line(training["lineage"], training.get("epochs_trained"))
    rows = _metric_rows(meta.get("metrics") or {})
    table = ["| metric | value | 95% CI |", "|---|---|---|"] + [
        f"| {k} | {_fmt(v)} | " + (f"{_fmt(ci[0])} – {_fmt(ci[1])} |" if ci else "– |") for k, v, ci in rows
    ]
    sections["Validation metrics"] = "\n".join(table) if rows else "No validation metrics were recorded."
    if meta.get("evaluations"):
        sections["Evaluation"] = _evaluations_section(meta["evaluations"], spec)
    sections["Limitations"] = _DEFAULT_LIMITATIONS.format(size=size or "the input size")
    sections["Reproduce"] = _reproduce_section(meta)
    return sections


def _lineage_line(lineage: dict, epochs: int | None) -> str:
    """``- Lineage: ...`` of a bundle trained from another one's weights (``medlens train --from``)."""
    start = lineage.get("from") or {}
    chain = [a.get("name", "?") for a in lineage.get("ancestors") or []] + [start.get("name", "?")]
    sha = str(start.get("weights_sha256", ""))[:12]
    split = "its split reused" if lineage.get("split_reused") else "a split of its own"
    head = ", new head" if start.get("new_head") else ""
    return (
        f"- Lineage: started from `{start.get('bundle')}` (weights sha256 {sha}…{head}; {split}); "
        f"{lineage.get('epochs_before')} epochs before + {epochs} here = {lineage.get('epochs_total')} in "
        f"total; ancestry: {' → '.join(chain)}"
    )


def _ci(metrics: dict, key: str) -> str:
    """``value (low–high)`` of a ``{key}_mean`` / ``{key}`` figure with its bootstrap CI, or ``–``."""
    value = metrics.get(f"{key}_mean", metrics.get(key))
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        return "–"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return f"{value:.3f} ({low:.3f}–{high:.3f})"
    return f"{value:.3f}"


def _rows_segmentation(spec: ModelSpec, sources: list[str]) -> list[tuple[str, str, str | None]]:
    """(label, metric key, sub-dict key) of each row of a segmentation model's evaluation table."""
    rows = [(k, k, None) for k in ("dice", "iou", "hd95", "sensitivity", "precision")]
    rows += [(f"dice, {s}", "dice", f"by_source.{s}") for s in sources]
    if spec.mode == Mode.MULTICLASS:
        rows += [(f"dice, {c}", f"dice_{c}", None) for c in spec.classes[1:]]
    return rows


def _rows_classification(spec: ModelSpec) -> list[tuple[str, str, str | None]]:
    """(label, metric key, sub-dict key) of each row of a classifier's evaluation table."""
    rows = [(k.replace("_", " "), k, None) for k in ("accuracy", "balanced_accuracy")]
    rows += [("macro AUC", "auc_macro", None), ("ece", "ece", None)]  # auc_macro: evaluate's key
    rows += [
        (f"at the shipped rule: {k.replace('_', ' ')}", k, "decision")
        for k in ("accuracy", "balanced_accuracy")
    ]
    rows += [(f"at the shipped rule: recall of {c}", c, "decision.recall") for c in spec.classes]
    for group in spec.groups or []:
        rows += [
            (f"{group.name} flag: {k}", k, f"groups.{group.name}")
            for k in ("sensitivity", "specificity", "auc")
        ]
    return rows


def _part(metrics: dict, path: str | None) -> dict:
    """The sub-dict at ``a.b`` of an evaluation; in a list of dicts the step picks the one with that name."""
    node: object = metrics
    for key in path.split(".") if path else []:
        if isinstance(node, list):
            node = next((x for x in node if isinstance(x, dict) and x.get("name") == key), {})
        else:
            node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _evaluations_section(evaluations: dict, spec: ModelSpec) -> str:
    """The validation / test / external figures side by side (``medlens evaluate --record``)."""
    names, runs = list(evaluations), list(evaluations.values())
    if spec.is_segmentation:
        sources = sorted({s for m in runs for s in (m.get("by_source") or {})})
        rows = _rows_segmentation(spec, sources)
    else:
        rows = _rows_classification(spec)
    lines = [
        "Scored by `medlens evaluate` at each image's own size with the default settings (no test-time "
        "augmentation); 95% bootstrap intervals over images in brackets.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| images | " + " | ".join(str(m.get("n_images", "–")) for m in runs) + " |",
    ]
    for label, key, path in rows:
        cells = [_ci(_part(m, path), key) for m in runs]
        if any(cell != "–" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Data: " + "; ".join(f"{n}: {m.get('data', '?')}" for n, m in evaluations.items())]
    return "\n".join(lines)


def _reproduce_section(meta: dict) -> str:
    import yaml

    training, name = meta["training"], meta["name"]
    config = training.get("config") or {}
    run = config.get("run_name") or training.get("run_name")
    out = config.get("out_dir") or "runs"
    data = (training.get("data_roots") or ["DATA"])[0]
    lines = [
        "```bash",
        "medlens train --config config.yaml",
        f"medlens bundle {out}/{run} --out models/{name}",
        f"medlens evaluate models/{name} {data} --out eval/{name}",
        "```",
    ]
    if config:
        lines += [
            "",
            "`config.yaml` (copied into this bundle):",
            "",
            "```yaml",
            yaml.safe_dump(config, sort_keys=False).rstrip(),
            "```",
        ]
    return "\n".join(lines)


def write_model_card(path: Path, meta: dict, card: dict | str | None = None) -> None:
    """Write the README.md model card; ``card`` (section -> markdown dict, or markdown) extends it."""
    sections = _card_sections(meta)
    if isinstance(card, dict):
        sections.update({str(k): str(v) for k, v in card.items()})
    elif isinstance(card, str) and card.strip():
        sections["Notes"] = card.strip()
    head = [
        f"# {meta['name']}",
        "",
        f"medlens {meta['medlens_version']}, bundle format "
        f"{meta['format_version']}, created {meta['created']}.",
        "",
    ]
    body = [f"## {title}\n\n{text.strip()}\n" for title, text in sections.items()]
    path.write_text("\n".join(head + body))


def read_card_sections(path: Path) -> dict[str, str]:
    """Markdown with ``## Section`` headings -> {section: body}; a same-named default section is replaced."""
    if not path.is_file():
        raise MedlensError(f"model card file not found: {path}")
    sections: dict[str, str] = {}
    title = "Notes"
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            sections[title] = ""
        else:
            sections[title] = sections.get(title, "") + line + "\n"
    return {k: v.strip() for k, v in sections.items() if v.strip()}
