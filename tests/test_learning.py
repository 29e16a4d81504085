"""Training learns: a few synthetic images are overfit on the CPU in seconds, and --resume gives the same
result as an uninterrupted run. These catch regressions that leave every other test green (a loss that no
longer reaches the weights, a broken schedule, augmentation that scrambles masks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medlens.config import load_config
from medlens.training.checkpoint import load_checkpoint
from medlens.training.trainer import Trainer, train
from tests.conftest import make_synthetic_classification, make_synthetic_segmentation

# Fixed geometry and colour: the tests measure learning, not robustness.
NO_AUGMENT = ["augment.hflip=0", "augment.vflip=0", "augment.p_affine=0", "augment.p_color=0"]


def _config(root: Path, out: Path, *extra: str):
    return load_config(None, [f"data.root={root}", f"out_dir={out}", "device=cpu", "amp=fp32",
                              "early_stopping_patience=null", *NO_AUGMENT, *extra])  # fmt: skip


def test_segmentation_overfits_a_few_images(tmp_path: Path) -> None:
    root = make_synthetic_segmentation(tmp_path / "seg", n=12, size=32)
    settings = ["data.input_size=[32,32]", "model.encoder=resnet18", "batch_size=4", "epochs=25",
                "optim.lr=0.003", "optim.warmup_epochs=1", "data.val_fraction=0.25"]  # fmt: skip
    cfg = _config(root, tmp_path / "runs", *settings)
    metrics = json.loads((train(cfg) / "val_metrics.json").read_text())
    assert metrics["dice"] > 0.9, metrics


def test_classification_reaches_full_accuracy(tmp_path: Path) -> None:
    root = make_synthetic_classification(tmp_path / "cls", n_per_class=8, size=32)
    settings = ["data.task=classification", "data.input_size=[32,32]", "model.arch=resnet18", "batch_size=4",
                "epochs=8", "optim.lr=0.003", "data.val_fraction=0.25", "calibrate=false"]  # fmt: skip
    cfg = _config(root, tmp_path / "runs", *settings)
    metrics = json.loads((train(cfg) / "val_metrics.json").read_text())
    assert metrics["accuracy"] == 1.0, metrics


def test_resume_gives_the_uninterrupted_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs straight, or a crash after epoch 1 and --resume: the same weights and history."""
    root = make_synthetic_segmentation(tmp_path / "seg", n=12, size=32)
    # augmentation on: its random draws must resume where they stopped
    common = ["epochs=2", "run_name=run", "data.input_size=[32,32]", "model.encoder=resnet18", "batch_size=4",
              "augment.hflip=0.5", "augment.p_affine=0.7"]  # fmt: skip
    straight = train(_config(root, tmp_path / "a", *common))
    end_epoch = Trainer.on_epoch_end

    def crash_after_first_epoch(self: Trainer, *args: object) -> None:
        end_epoch(self, *args)  # checkpoints/last.pt of epoch 1 is written here
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Trainer, "on_epoch_end", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_config(root, tmp_path / "b", *common))
    monkeypatch.setattr(Trainer, "on_epoch_end", end_epoch)
    resumed = train(_config(root, tmp_path / "b", *common), resume=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, resumed))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
