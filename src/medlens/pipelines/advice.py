"""Rule-based advice (a reading and every finding that applies), the mandatory notice, and the out-of-scope
checks of a pipeline.

Rules come from the pipeline YAML (``advice:`` section)::

    advice:
      notice: "Research tool, not a diagnosis. ..."
      default: "No pattern of concern was recognised. ..."
      rules:                        # the reading: the first rule whose conditions all hold
        - when: {label_in: [mel, bcc, akiec], prob_gte: 0.3}
          say: "Pattern of high concern: see a dermatologist soon."
      findings:                     # every finding whose conditions all hold, most severe first
        - name: wider_than_6mm      # its ``source`` in the results (default ``finding<i>``)
          when: {feature_gte: {diameter_mm: 6}}
          severity: moderate        # high | moderate | low (`SEVERITIES`)
          say: "Wider than 6 mm: have it checked."

The reading (`AdviceConfig.advise`): the rules are tried in order and the first whose conditions all hold
gives the text; none -> ``default``. The findings (`AdviceConfig.find`): one `Finding` per finding rule
that holds, ordered by severity (ties keep the YAML order), so that no finding hides another; an image out
of scope gets its refusal as its findings, one per reason. A YAML without ``findings`` (rules only) loads as
before.
Conditions (`CONDITIONS`): ``label_in`` / ``label_not_in`` (list of class names), ``prob_gte`` / ``prob_lt``
(calibrated probability of the predicted class), ``class_prob_gte`` ({class: p}: any listed class at least p),
``uncertainty_gte`` / ``uncertainty_lt`` (TTA uncertainty), ``feature_gte`` / ``feature_lt`` ({feature:
value}, all must hold), ``region_found`` (bool) and ``gradcam_inside_gte`` / ``gradcam_inside_lt`` (share of
the Grad-CAM inside the segmented region, 0..1). A condition on a value that is unknown (no classifier, no
spacing, no Grad-CAM...) does not hold.

The notice is mandatory: a YAML without one gets `DEFAULT_NOTICE`, and a custom notice that does not say
"not a diagnosis" is prefixed with `NOTICE_PREFIX`.

Out of scope (`ScopeConfig`, YAML ``scope:``) — after the modality classifier's check
(`medlens.pipelines.modality`, YAML ``modality:``), an image is flagged instead of forced into a class when

(a) it looks like another modality: the mean per-pixel chroma ``max(R,G,B) - min(R,G,B)`` (0..255) is below
    ``chroma_threshold`` for a pipeline that expects colour (dermoscopy, endoscopy), or above it for one that
    expects grayscale (X-ray); single-channel images have chroma 0;
(b) the classifier's top calibrated probability is below ``min_probability`` and its TTA uncertainty is at
    least ``max_uncertainty`` (without TTA the probability floor alone decides);
(c) ``require_region`` is set and the segmenter found less than ``min_region_fraction`` of the image
    (nothing).

Every check that runs gives its reason (the models do not run on an image the modality or colour checks
refuse, so (b) and (c) come after them); `scope_summary` puts them in one line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.errors import ConfigError

logger = logging.getLogger(__name__)

NOTICE_PREFIX = "Research tool, not a diagnosis."
DEFAULT_NOTICE = (
    f"{NOTICE_PREFIX} medlens has not been clinically validated; its output must be interpreted by a "
    "qualified clinician and must not be used to make or rule out a diagnosis."
)
DEFAULT_ADVICE = (
    "No rule matched this result. Ask a clinician if anything about the lesion or image worries you."
)

CONDITIONS = (
    "label_in",
    "label_not_in",
    "prob_gte",
    "prob_lt",
    "class_prob_gte",
    "uncertainty_gte",
    "uncertainty_lt",
    "feature_gte",
    "feature_lt",
    "region_found",
    "gradcam_inside_gte",
    "gradcam_inside_lt",
)
SEVERITIES = ("high", "moderate", "low")
"""Severities of a finding, most severe first (the order findings are shown in)."""


@dataclass
class AdviceContext:
    """What a rule can look at: the prediction, its calibrated probabilities, TTA uncertainty, features and
    the share of the Grad-CAM inside the segmented region."""

    label: str | None = None
    probability: float | None = None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    uncertainty: float | None = None
    features: Mapping[str, Any] = field(default_factory=dict)
    region_found: bool | None = None
    gradcam_inside: float | None = None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _cmp(value: Any, threshold: float, op: str) -> bool:
    v = _number(value)
    if v is None:
        return False
    return v >= threshold if op == "gte" else v < threshold


def _feature_test(features: Mapping[str, Any], spec: Mapping[str, float], op: str) -> bool:
    return all(_cmp(features.get(name), float(t), op) for name, t in spec.items())


@dataclass(frozen=True)
class AdviceRule:
    """One ``when`` (all conditions must hold) -> ``say`` rule."""

    when: Mapping[str, Any]
    say: str

    def matches(self, ctx: AdviceContext) -> bool:
        """Whether every condition of the rule holds for ``ctx``."""
        w = self.when
        tests = {
            "label_in": lambda v: ctx.label is not None and ctx.label in v,
            "label_not_in": lambda v: ctx.label is not None and ctx.label not in v,
            "prob_gte": lambda v: _cmp(ctx.probability, v, "gte"),
            "prob_lt": lambda v: _cmp(ctx.probability, v, "lt"),
            "class_prob_gte": lambda v: any(_cmp(ctx.probabilities.get(c), p, "gte") for c, p in v.items()),
            "uncertainty_gte": lambda v: _cmp(ctx.uncertainty, v, "gte"),
            "uncertainty_lt": lambda v: _cmp(ctx.uncertainty, v, "lt"),
            "feature_gte": lambda v: _feature_test(ctx.features, v, "gte"),
            "feature_lt": lambda v: _feature_test(ctx.features, v, "lt"),
            "region_found": lambda v: ctx.region_found is not None and ctx.region_found == v,
            "gradcam_inside_gte": lambda v: _cmp(ctx.gradcam_inside, v, "gte"),
            "gradcam_inside_lt": lambda v: _cmp(ctx.gradcam_inside, v, "lt"),
        }
        return all(tests[key](value) for key, value in w.items())


def _check_condition(key: str, value: Any, where: str) -> None:
    if key not in CONDITIONS:
        raise ConfigError(f"{where}: unknown condition {key!r}; valid: {', '.join(CONDITIONS)}")
    if key in ("label_in", "label_not_in"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif key in ("class_prob_gte", "feature_gte", "feature_lt"):
        ok = isinstance(value, dict) and bool(value) and all(_number(v) is not None for v in value.values())
    elif key == "region_found":
        ok = isinstance(value, bool)
    else:
        ok = _number(value) is not None
    if not ok:
        raise ConfigError(f"{where}: bad value {value!r} for condition {key!r}")


@dataclass(frozen=True)
class FindingRule(AdviceRule):
    """A rule of the ``findings`` list: also a ``name`` (the finding's source) and a ``severity``."""

    name: str = ""
    severity: str = "moderate"


@dataclass(frozen=True)
class Finding:
    """One finding shown beside the reading: its text, severity (one of `SEVERITIES`) and source (the name of
    the YAML finding, or ``scope`` for an image out of scope)."""

    text: str
    severity: str
    source: str


def scope_finding(reason: str) -> Finding:
    """The finding of an image out of scope (source ``scope``, severity high), whichever check refused it:
    the modality check (`medlens.pipelines.modality`), colour, confidence or region."""
    return Finding(f"Out of scope: {reason}.", "high", "scope")


def _parse_when(raw: dict, where: str, extra: frozenset[str] = frozenset()) -> dict:
    if set(raw) - {"when", "say", *extra} or not isinstance(raw.get("say"), str):
        raise ConfigError(
            f"{where}: a rule is a mapping with 'when' (conditions) and 'say' (text)"
            + (f" and optional {', '.join(sorted(extra))}" if extra else "")
            + f", got {raw!r}"
        )
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{where}: 'when' must be a mapping of conditions, got {when!r}")
    for key, value in when.items():
        _check_condition(key, value, where)
    return dict(when)


def parse_rule(raw: Any, where: str) -> AdviceRule:
    """Validate one YAML rule ``{when: {...}, say: "..."}``; `ConfigError` naming ``where`` otherwise."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: a rule is a mapping with 'when' (conditions) and 'say' (text), got {raw!r}"
        )
    return AdviceRule(when=_parse_when(raw, where), say=raw["say"].strip())


def parse_finding(raw: Any, where: str, default_name: str) -> FindingRule:
    """Validate one YAML finding ``{name, when: {...}, severity, say}`` (``name`` optional)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a finding is a mapping with 'when', 'severity' and 'say', got {raw!r}")
    when = _parse_when(raw, where, frozenset({"name", "severity"}))
    severity, name = raw.get("severity"), raw.get("name", default_name)
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: 'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' must be text, got {name!r}")
    return FindingRule(when=when, say=raw["say"].strip(), name=name.strip(), severity=severity)


def ensure_notice(notice: str | None) -> str:
    """The mandatory notice: `DEFAULT_NOTICE` when empty, prefixed with `NOTICE_PREFIX` when it omits it."""
    notice = (notice or "").strip()
    if not notice:
        return DEFAULT_NOTICE
    return notice if "not a diagnosis" in notice.lower() else f"{NOTICE_PREFIX} {notice}"


@dataclass
class AdviceConfig:
    """Ordered reading rules, finding rules, the default text and the notice of one pipeline."""

    rules: list[AdviceRule] = field(default_factory=list)
    notice: str = DEFAULT_NOTICE
    default: str = DEFAULT_ADVICE
    findings: list[FindingRule] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, source: str = "<advice>") -> AdviceConfig:
        """Build from the YAML ``advice:`` mapping; `ConfigError` naming ``source`` for bad keys or rules."""
        raw = dict(raw or {})
        unknown = set(raw) - {"rules", "findings", "notice", "default"}
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) in 'advice': {', '.join(sorted(unknown))}")
        rules_raw, findings_raw = raw.get("rules") or [], raw.get("findings") or []
        for key, value in (("rules", rules_raw), ("findings", findings_raw)):
            if not isinstance(value, list):
                raise ConfigError(f"{source}: 'advice.{key}' must be a list")
        rules = [parse_rule(r, f"{source} advice.rules[{i}]") for i, r in enumerate(rules_raw)]
        findings = [
            parse_finding(f, f"{source} advice.findings[{i}]", f"finding{i}")
            for i, f in enumerate(findings_raw)
        ]
        names = [f.name for f in findings]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: the names of 'advice.findings' must differ, got {names}")
        default = raw.get("default") or DEFAULT_ADVICE
        if not isinstance(default, str):
            raise ConfigError(f"{source}: 'advice.default' must be text")
        return cls(rules=rules, notice=ensure_notice(raw.get("notice")), default=default.strip(),
                   findings=findings)  # fmt: skip

    def advise(self, ctx: AdviceContext) -> str:
        """The reading: text of the first matching rule, else the default."""
        for rule in self.rules:
            if rule.matches(ctx):
                return rule.say
        return self.default

    def find(self, ctx: AdviceContext, scope_reasons: Sequence[str] = ()) -> list[Finding]:
        """Every finding that holds for ``ctx``, most severe first (findings of equal severity keep the YAML's
        order); for an image out of scope (``scope_reasons``) its refusal only, one finding per reason: a
        measurement of an image the pipeline refuses to read is no finding."""
        if scope_reasons:
            return [scope_finding(reason) for reason in scope_reasons]
        found = [Finding(f.say, f.severity, f.name) for f in self.findings if f.matches(ctx)]
        return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


# ---------------------------------------------------------------------------------------------------- scope
EXPECT = ("colour", "grayscale", "any")


@dataclass
class ScopeConfig:
    """Out-of-scope thresholds of a pipeline (see the module docstring)."""

    expect: str = "any"
    chroma_threshold: float = 8.0
    min_probability: float | None = None
    max_uncertainty: float | None = None
    require_region: bool = False
    min_region_fraction: float = 0.0
    modality_name: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, source: str = "<scope>") -> ScopeConfig:
        """Build from the YAML ``scope:`` mapping; `ConfigError` naming ``source`` for bad keys or values."""
        raw = dict(raw or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) in 'scope': {', '.join(sorted(unknown))}")
        cfg = cls(**raw)
        if cfg.expect not in EXPECT:
            raise ConfigError(
                f"{source}: scope.expect must be one of {', '.join(EXPECT)}, got {cfg.expect!r}"
            )
        for name in ("chroma_threshold", "min_probability", "max_uncertainty", "min_region_fraction"):
            value = getattr(cfg, name)
            if value is not None and _number(value) is None:
                raise ConfigError(f"{source}: scope.{name} must be a number, got {value!r}")
        if not isinstance(cfg.require_region, bool):
            raise ConfigError(f"{source}: scope.require_region must be true or false")
        return cfg


def image_chroma(image: np.ndarray) -> float:
    """Mean per-pixel chroma ``max(R,G,B) - min(R,G,B)`` of an ``(H, W[, C])`` uint8 image, 0..255.

    About 0 for grayscale images (even stored as RGB, up to JPEG noise), tens for dermoscopy or endoscopy.
    Large images are subsampled on a regular grid (at most ~65k pixels).
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return 0.0
    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 65536)))
    px = image[::step, ::step, :3].astype(np.int16)
    return float((px.max(axis=2) - px.min(axis=2)).mean())


def check_modality(image: np.ndarray, scope: ScopeConfig) -> str | None:
    """Reason the image looks like another modality than ``scope.expect``, or None (check (a))."""
    if scope.expect == "any":
        return None
    chroma = image_chroma(image)
    what = f" ({scope.modality_name})" if scope.modality_name else ""
    if scope.expect == "colour" and chroma < scope.chroma_threshold:
        return (
            f"the image looks grayscale (mean chroma {chroma:.1f} < {scope.chroma_threshold:g}) but this "
            f"pipeline expects colour images{what}"
        )
    if scope.expect == "grayscale" and chroma >= scope.chroma_threshold:
        return (
            f"the image is in colour (mean chroma {chroma:.1f} >= {scope.chroma_threshold:g}) but this "
            f"pipeline expects grayscale images{what}"
        )
    return None


def check_confidence(probability: float | None, uncertainty: float | None, scope: ScopeConfig) -> str | None:
    """Reason the classification is too unsure to give a class, or None (check (b))."""
    if scope.min_probability is None or probability is None or probability >= scope.min_probability:
        return None
    if uncertainty is not None and scope.max_uncertainty is not None and uncertainty < scope.max_uncertainty:
        return None
    unc = f" with TTA uncertainty {uncertainty:.3f}" if uncertainty is not None else ""
    return (
        f"the classifier is unsure: top probability {probability:.2f} < {scope.min_probability:g}{unc}; "
        "the image may not resemble the training data"
    )


def check_region(area_fraction: float | None, scope: ScopeConfig) -> str | None:
    """Reason the required region is missing, or None (check (c))."""
    if not scope.require_region or area_fraction is None:
        return None
    if area_fraction > scope.min_region_fraction:
        return None
    return "the segmenter found no region of interest, which this pipeline requires"


SCOPE_REASONS_JOINT = "; and "  # between the reasons of `scope_summary`


def scope_summary(reasons: Sequence[str]) -> str | None:
    """Every reason an image is out of scope, in the order the checks ran, as one line (None: in scope)."""
    return SCOPE_REASONS_JOINT.join(reasons) or None


def out_of_scope_text(reason: str, title: str | None) -> str:
    """Recommendation for an out-of-scope analysis (``title``: the pipeline's; None when no pipeline took the
    image, as with ``pipeline=auto``)."""
    where = f" for the {title} pipeline" if title else ""
    return (
        f"Out of scope{where}: {reason}. No class is given. Check that the right pipeline and image were "
        "chosen, and ask a clinician to review the image."
    )
