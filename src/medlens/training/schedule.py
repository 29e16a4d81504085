"""Per-step learning-rate schedules: linear warm-up, then cosine or polynomial decay (nnU-Net uses poly 0.9).

The schedule is a picklable callable so that ``LambdaLR.state_dict()`` saves it and ``--resume`` restores it
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from medlens.config import SCHEDULES
from medlens.errors import ConfigError


@dataclass
class WarmupDecay:
    """LR factor at optimizer step ``step`` (0-based): linear warm-up to 1, then ``schedule`` down to
    ``final_ratio``.

    Args:
        total_steps: number of optimizer steps of the whole training.
        warmup_steps: steps of linear warm-up from ``1 / (warmup_steps + 1)`` to 1.
        schedule: "cosine" (half cosine), "poly" (``(1 - t) ** poly_power``) or "constant".
        final_ratio: factor reached at the last step (fraction of the base LR).
        poly_power: exponent of the poly schedule.
    """

    total_steps: int
    warmup_steps: int = 0
    schedule: str = "cosine"
    final_ratio: float = 0.0
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"optim.schedule: unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"
            )
        self.total_steps = max(1, int(self.total_steps))
        self.warmup_steps = max(0, min(int(self.warmup_steps), self.total_steps - 1))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * t))
        else:
            shape = (1.0 - t) ** self.poly_power
        return self.final_ratio + (1.0 - self.final_ratio) * shape


class WarmupDecayLR(LambdaLR):
    """``LambdaLR`` over one :class:`WarmupDecay` (every param group keeps its own base LR) whose length can
    change while training: a time budget that shortens the run, or ``--resume`` with more epochs."""

    def __init__(self, optimizer: torch.optim.Optimizer, shape: WarmupDecay) -> None:
        self.shape = shape
        super().__init__(optimizer, shape)

    @property
    def total_steps(self) -> int:
        return self.shape.total_steps

    def set_total_steps(self, total_steps: int) -> None:
        """Stretch or shorten the decay to end at ``total_steps`` (never before the warm-up ends)."""
        self.shape.total_steps = max(self.shape.warmup_steps + 1, int(total_steps))

    def state_dict(self) -> dict:
        """Plain data only (checkpoints load with ``weights_only=True``); the shape is in ``lr_lambdas``."""
        state = super().state_dict()
        state.pop("shape", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.shape = self.lr_lambdas[0]


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    final_ratio: float = 0.0,
    poly_power: float = 0.9,
) -> WarmupDecayLR:
    """The LR schedule, stepped once per optimizer step."""
    return WarmupDecayLR(optimizer, WarmupDecay(total_steps, warmup_steps, schedule, final_ratio, poly_power))
