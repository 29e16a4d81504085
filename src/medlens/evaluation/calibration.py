"""Calibration: reliability curve, expected calibration error, Brier score, temperature scaling, thresholds.

Conventions: ``probs`` are ``(N, K)`` float probabilities (a ``(N,)`` vector is read as the positive-class
probability of a binary problem), ``y_true`` are ``(N,)`` int class indices, ``logits`` are ``(N, K)`` floats.
Temperature scaling follows Guo et al. 2017 ("On Calibration of Modern Neural Networks"): one scalar
``T > 0`` dividing the logits, fitted by minimising the validation negative log-likelihood; it never changes
the arg-max.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from medlens.errors import MedlensError

logger = logging.getLogger(__name__)

_MIN_T, _MAX_T = 0.05, 100.0


def _as_probs(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise MedlensError(f"probabilities of shape {probs.shape} do not match {y_true.shape[0]} labels")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= probs.shape[1]):
        raise MedlensError(f"labels must be class indices in 0..{probs.shape[1] - 1}")
    return probs, y_true


@dataclass
class ReliabilityCurve:
    """Top-label reliability curve over ``n_bins`` equal-width confidence bins of ``(0, 1]``.

    ``confidence``/``accuracy`` are the per-bin mean top-label confidence and accuracy (nan for empty bins);
    ``counts`` the number of samples per bin; ``edges`` the ``n_bins + 1`` bin edges.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_b |B_b| / N * |acc_b - conf_b|``."""
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / total)


def reliability_curve(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> ReliabilityCurve:
    """Bin samples by top-label confidence; bin ``b`` holds confidences in ``(b/n, (b+1)/n]`` (0 goes to
    bin 0). ``probs`` ``(N, K)`` (or ``(N,)`` positive-class probabilities), ``y_true`` ``(N,)``."""
    probs, y_true = _as_probs(probs, y_true)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), conf, acc, counts)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (Guo et al. 2017).

    ``probs`` ``(N, K)`` float (or ``(N,)`` positive-class probabilities), ``y_true`` ``(N,)`` int."""
    return reliability_curve(probs, y_true, n_bins).ece


def brier_score(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - onehot_k)^2`` (0 = perfect, 2 = worst)."""
    probs, y_true = _as_probs(probs, y_true)
    if y_true.size == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[y_true]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def fit_temperature(
    logits: np.ndarray | torch.Tensor, y_true: np.ndarray | torch.Tensor, max_iter: int = 200
) -> float:
    """Fit the temperature ``T`` minimising the NLL of ``softmax(logits / T)``; LBFGS on ``log T`` (float64).

    Args:
        logits: ``(N, K)`` validation logits (any float dtype).
        y_true: ``(N,)`` int class indices.

    Returns:
        ``T`` as a float, clipped to ``[0.05, 100]``; 1.0 (no change) when there is nothing to fit.
    """
    z = torch.as_tensor(np.asarray(logits) if not torch.is_tensor(logits) else logits.detach().cpu())
    y = torch.as_tensor(np.asarray(y_true) if not torch.is_tensor(y_true) else y_true.detach().cpu())
    z, y = z.to(torch.float64), y.reshape(-1).to(torch.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise MedlensError(f"logits of shape {tuple(z.shape)} do not match {y.shape[0]} labels")
    if y.numel() == 0 or z.shape[1] < 2:
        logger.warning("temperature scaling skipped: %d samples, %d classes", y.numel(), z.shape[1])
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        logger.warning("temperature scaling diverged; keeping T = 1")
        return 1.0
    return float(min(max(t, _MIN_T), _MAX_T))


def apply_temperature(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray | torch.Tensor:
    """``softmax(logits / T)`` over the last axis; numpy in -> numpy out, tensor in -> tensor out."""
    if temperature <= 0:
        raise MedlensError(f"temperature must be > 0, got {temperature}")
    if torch.is_tensor(logits):
        return torch.softmax(logits / temperature, dim=-1)
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def threshold_for_sensitivity(p_pos: np.ndarray, y_true: np.ndarray, target: float = 0.95) -> float:
    """Largest threshold ``t`` such that the rule ``p_pos >= t`` reaches sensitivity ``>= target``.

    Taking the largest such ``t`` keeps specificity as high as possible at that sensitivity. Args: ``p_pos``
    ``(N,)`` positive-class probabilities, ``y_true`` ``(N,)`` 0/1 labels, ``target`` in ``(0, 1]``.
    """
    p_pos = np.asarray(p_pos, dtype=np.float64).reshape(-1)
    y_true = np.asarray(y_true).reshape(-1)
    if p_pos.shape != y_true.shape:
        raise MedlensError(f"{p_pos.size} probabilities do not match {y_true.size} labels")
    if not 0.0 < target <= 1.0:
        raise MedlensError(f"target sensitivity must be in (0, 1], got {target}")
    positives = np.sort(p_pos[y_true.astype(bool)])[::-1]
    if positives.size == 0:
        raise MedlensError("cannot choose a threshold for sensitivity: no positive sample in the labels")
    needed = max(1, math.ceil(target * positives.size - 1e-9))  # guard 0.95 * 20 = 19.000000000000004
    return float(positives[needed - 1])
