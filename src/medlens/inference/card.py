"""README.md model card for a bundle: description, data, validation metrics + CIs, intended use, limitations,
how to reproduce. Split out of ``medlens.inference.bundle``, which re-exports ``write_model_card``."""

from __future__ import annotations

from pathlib import Path

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
    spec, training = meta["spec"], meta["training"]
    size = "x".join(str(s) for s in spec.get("input_size", []))
    data = ", ".join(training.get("data_roots") or []) or "unrecorded data"
    sections = {
        "Description": (
            f"A medlens {spec['task']} model ({spec.get('mode', '')}): `{spec['arch']}`"
            + (f" with a `{spec['encoder']}` encoder" if spec["task"] == "segmentation" else "")
            + f", input {size}, {spec['in_channels']} channel(s). "
            + f"Classes: {', '.join(spec.get('classes', []))}."
        ),
        "Intended use": _DEFAULT_INTENDED_USE.format(task=spec["task"], data=data),
    }
    splits = ", ".join(f"{k} {v}" for k, v in (training.get("split_sizes") or {}).items()) or "unrecorded"
    sections["Data"] = (
        f"- Data: {data}\n- Split (images): {splits}\n"
        f"- Epochs trained: {training.get('epochs_trained')}; best epoch: {training.get('best_epoch')}\n"
        f"- Normalisation: mean {spec.get('mean')}, std {spec.get('std')}"
    )
    rows = _metric_rows(meta.get("metrics") or {})
    table = ["| metric | value | 95% CI |", "|---|---|---|"] + [
        f"| {k} | {_fmt(v)} | " + (f"{_fmt(ci[0])} – {_fmt(ci[1])} |" if ci else "– |") for k, v, ci in rows
    ]
    sections["Validation metrics"] = "\n".join(table) if rows else "No validation metrics were recorded."
    sections["Limitations"] = _DEFAULT_LIMITATIONS.format(size=size or "the input size")
    sections["Reproduce"] = _reproduce_section(meta)
    return sections


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
