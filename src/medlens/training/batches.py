"""Batches drawn by index from the in-memory uint8 cache: no DataLoader, no per-step decoding.

Each epoch a generator seeded by ``(seed, epoch)`` draws the epoch's indices (a permutation, or
``torch.multinomial`` over per-sample weights for class-balanced sampling); every rank takes its own disjoint
shard (``distributed.shard_indices``), so runs are reproducible, resumable at epoch boundaries and identical
in size on every rank. Images become float, are augmented and normalised on the training device.
"""

from __future__ import annotations

import math

import torch

from medlens.spec import Mode
from medlens.training.distributed import shard_indices


class IndexSampler:
    """Index batches ``(steps, batch_size)`` into a cache of ``n`` samples for one rank.

    Args:
        n: samples in the cache.
        batch_size: samples per step on this rank.
        steps: steps per epoch.
        seed: run seed; the epoch's generator is seeded with ``(seed, epoch)``.
        weights: optional ``(n,)`` float sampling weights (balanced sampling, with replacement).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.n, self.batch_size, self.steps, self.seed = n, batch_size, steps, seed
        self.rank, self.world_size, self.weights = rank, world_size, weights

    def epoch(self, epoch: int) -> torch.Tensor:
        """``(steps, batch_size)`` int64 indices of this rank for ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        per_rank = self.steps * self.batch_size
        total = per_rank * self.world_size
        if self.weights is not None:
            idx = torch.multinomial(self.weights, total, replacement=True, generator=g)
        else:
            rounds = math.ceil(total / self.n)
            idx = torch.cat([torch.randperm(self.n, generator=g) for _ in range(rounds)])[:total]
        return shard_indices(idx, self.rank, self.world_size, per_rank).view(self.steps, self.batch_size)


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights ``1 / count(class)`` so that every class is drawn equally often. ``labels``: (N,)
    int64."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1).double()
    return (1.0 / counts)[labels.cpu()]


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 0..1 on ``device``."""
    return images.to(device, non_blocking=True).float().div_(255.0)


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    """``(x - mean) / std`` with ``mean``/``std`` shaped ``(1, C, 1, 1)`` on the same device; optional NHWC
    memory."""
    x = (images - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def seg_targets(targets: torch.Tensor, mode: str, device: torch.device) -> torch.Tensor:
    """Cached masks -> loss targets: binary ``(B,1,H,W)`` / multilabel ``(B,K,H,W)`` float, multiclass
    ``(B,H,W)`` long."""
    t = targets.to(device, non_blocking=True)
    return t.long() if mode == Mode.MULTICLASS else t.float()


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a permutation of itself.

    Args:
        x: float ``(B, C, H, W)``. y: ``(B,)`` int64 class indices.
        mixup / cutmix: Beta(alpha, alpha) parameters; 0 turns one off; both on: one of them per batch.

    Returns:
        ``(mixed x, soft targets (B, K) float32)`` with targets ``lam * onehot(y) + (1 - lam) *
        onehot(y[perm])`` (for CutMix ``lam`` is the kept area fraction).
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    onehot = torch.nn.functional.one_hot(y.long(), num_classes).float()
    return x, lam * onehot + (1.0 - lam) * onehot[perm]
