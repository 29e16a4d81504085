"""Class groups of a classifier (e.g. "malignant" = mel + bcc + akiec): summed probability and a flag.

The groups, their members and each flag's threshold come from the classifier bundle's ``spec.groups``, fitted
on the validation split for a target sensitivity (``medlens.training.decisions.fit_group_flags``). Bundles
without groups (format 1) give none: no threshold is ever invented here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medlens.errors import BundleError
from medlens.spec import ClassGroup


def group_scores(
    probabilities: Mapping[str, float], groups: Sequence[ClassGroup] | None
) -> list[dict[str, Any]]:
    """One entry per group: ``{"name", "classes", "probability", "threshold", "flagged", "target_sensitivity",
    "sensitivity", "specificity"}`` (the last three as measured on validation; None when not recorded).

    ``probability`` is the sum of the members' calibrated probabilities; ``flagged`` is
    ``probability >= threshold``. BundleError when a group names a class the classifier does not have.
    """
    out = []
    for group in groups or []:
        missing = [c for c in group.classes if c not in probabilities]
        if missing:
            raise BundleError(
                f"class group {group.name!r} names {missing}, which are not classes of the classifier "
                f"({', '.join(probabilities)})"
            )
        p = float(sum(probabilities[c] for c in group.classes))
        threshold = float(group.threshold)
        out.append(
            {
                "name": str(group.name),
                "classes": list(group.classes),
                "probability": round(p, 6),
                "threshold": threshold,
                "flagged": p >= threshold,
                "target_sensitivity": group.target_sensitivity,
                "sensitivity": group.sensitivity,
                "specificity": group.specificity,
            }
        )
    return out


def group_fields(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Flat columns for JSON and CSV: ``<name>_probability`` and ``<name>_flagged`` per group."""
    out: dict[str, Any] = {}
    for s in scores:
        out[f"{s['name']}_probability"] = s["probability"]
        out[f"{s['name']}_flagged"] = s["flagged"]
    return out
