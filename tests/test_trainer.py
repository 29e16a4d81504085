"""Trainer: run folder, resume, classification extras (calibration, decision, two-stage, mixup, balanced
sampling), early stopping, time budget, real-data smoke run; plus the helpers (schedule, sampler, Dice,
checkpoints).

Tiny on purpose: 32-64 px images, resnet18 / mobilenet_v2 from scratch, 1-3 epochs.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medlens.config import load_config
from medlens.errors import ConfigError, MedlensError
from medlens.evaluation.metrics import dice as np_dice
from medlens.evaluation.metrics import iou as np_iou
from medlens.training import batches, optim
from medlens.training.checkpoint import load_checkpoint, rng_state, seed_everything, set_rng_state
from medlens.training.optim import amp_dtype, precision_name
from medlens.training.schedule import WarmupDecay
from medlens.training.trainer import TimeBudget, train
from medlens.training.validation import classification_report, dice_iou, positive_class
from tests.conftest import make_synthetic_classification, make_synthetic_segmentation

RUN_FILES = (
    "config.yaml",
    "plan.json",
    "fingerprint.json",
    "split.json",
    "metrics.csv",
    "curves.png",
    "model_spec.json",
    "val_metrics.json",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
)


def seg_config(root: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            f"out_dir={out}",
            "data.input_size=[32,32]",
            "model.arch=unet",
            "model.encoder=resnet18",
            "batch_size=4",
            "device=cpu",
            "amp=fp32",  # per-epoch and final validation then agree to the last digit
            *extra,
        ],
    )


def cls_config(root: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            f"out_dir={out}",
            "data.task=classification",
            "data.input_size=[32,32]",
            "model.arch=resnet18",
            "batch_size=4",
            "device=cpu",
            "amp=fp32",
            "data.val_fraction=0.25",
            *extra,
        ],
    )


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch segmentation run shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("segrun")
    root = make_synthetic_segmentation(tmp / "seg")
    return train(seg_config(root, tmp / "runs", "epochs=2", "run_name=seg"))


# ------------------------------------------------------------------------------------------ training runs
def test_segmentation_run_folder_is_complete(seg_run: Path) -> None:
    for rel in RUN_FILES:
        assert (seg_run / rel).is_file(), rel
    rows = read_rows(seg_run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"lr", "train_loss", "val_loss", "val_dice", "val_iou"} <= set(rows[0])
    spec = json.loads((seg_run / "model_spec.json").read_text())
    assert spec["task"] == "segmentation" and spec["arch"] == "unet" and spec["encoder"] == "resnet18"
    assert (
        spec["input_size"] == [32, 32]
        and spec["num_classes"] == 1
        and len(spec["mean"]) == spec["in_channels"]
    )
    metrics = json.loads((seg_run / "val_metrics.json").read_text())
    best = load_checkpoint(seg_run / "checkpoints" / "best.pt")
    assert metrics["best_epoch"] == best["epoch"] and 0.0 <= metrics["dice"] <= 1.0
    assert metrics["dice"] == pytest.approx(float(rows[best["epoch"] - 1]["val_dice"]), abs=1e-5)
    split = json.loads((seg_run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 12 and not set(split["train"]) & set(split["val"])
    saved = yaml.safe_load((seg_run / "config.yaml").read_text())
    assert saved["data"]["input_size"] == [32, 32] and saved["batch_size"] == 4 and saved["loss"] == "dice_ce"
    assert saved["run_name"] == "seg"


def test_explicit_settings_beat_the_plan_and_precision_is_recorded(
    synthetic_seg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit augment value equal to the built-in default is kept; unset ones come from the plan."""
    monkeypatch.setattr(optim, "cpu_has_fast_bf16", lambda: True)
    cfg = seg_config(synthetic_seg, tmp_path, "epochs=1", "steps_per_epoch=1", "amp=auto", "augment.vflip=0",
                     "augment.hue=0", "augment.rotate_deg=15")  # fmt: skip
    saved = yaml.safe_load((train(cfg) / "config.yaml").read_text())
    plan = json.loads((tmp_path / saved["run_name"] / "plan.json").read_text())
    assert plan["augment"]["vflip"] == 0.5 and plan["augment"]["rotate_deg"] == 180.0  # colour data
    assert (saved["augment"]["vflip"], saved["augment"]["hue"], saved["augment"]["rotate_deg"]) == (
        0.0,
        0.0,
        15.0,
    )
    assert saved["augment"]["scale"] == plan["augment"]["scale"] and saved["augment"]["p_color"] == 0.8
    assert saved["amp"] == "bf16"


def test_test_split_and_sources_are_reported_apart(tmp_path: Path) -> None:
    """Two data folders: validation scores per source, selection on their mean, a test split reported."""
    a = make_synthetic_segmentation(tmp_path / "site_a", n=16, seed=1)
    b = make_synthetic_segmentation(tmp_path / "site_b", n=16, seed=2)
    cfg = seg_config(a, tmp_path / "runs", "epochs=1", f"data.extra_roots=[{b}]", "data.val_fraction=0.25",
                     "data.test_fraction=0.25")  # fmt: skip
    run = train(cfg)
    row = read_rows(run)[0]
    per_source = [float(row["val_dice_site_a"]), float(row["val_dice_site_b"])]
    assert float(row["val_dice"]) == pytest.approx(np.mean(per_source), abs=1e-6)
    split = json.loads((run / "split.json").read_text())
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["split"] == "test" and test["n_images"] == len(split["test"]) > 0
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert {"dice_site_a", "dice_site_b", "dice_source_mean"} <= set(test)
    val = json.loads((run / "val_metrics.json").read_text())
    assert val["dice_source_mean"] == pytest.approx(np.mean([val["dice_site_a"], val["dice_site_b"]]))


def test_checkpoints_load_into_a_fresh_model(seg_run: Path) -> None:
    from medlens.inference.bundle import load_model_source

    model, spec = load_model_source(seg_run)
    with torch.no_grad():
        out = model(torch.zeros(1, spec.in_channels, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    last = torch.load(seg_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "rng", "history"} <= set(last)


def test_resume_continues_from_last_epoch(seg_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(seg_run, tmp_path / "runs" / "seg")
    before = read_rows(run)
    cfg = load_config(run / "config.yaml", ["epochs=3", f"out_dir={tmp_path / 'runs'}"])
    assert train(cfg, resume=True) == run
    rows = read_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[:2] == before  # history restored from last.pt, not retrained
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    assert json.loads((run / "split.json").read_text()) == json.loads((seg_run / "split.json").read_text())


def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(seg_run: Path, tmp_path: Path) -> None:
    cfg = load_config(seg_run / "config.yaml", [f"out_dir={seg_run.parent}"])
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg)
    with pytest.raises(MedlensError, match=r"no checkpoints/last\.pt"):
        train(load_config(seg_run / "config.yaml", [f"out_dir={tmp_path}"]), resume=True)


def test_classification_calibration_decision_two_stage_mixup(synthetic_cls: Path, tmp_path: Path) -> None:
    cfg = cls_config(
        synthetic_cls,
        tmp_path,
        "epochs=2",
        "run_name=cls",
        "target_sensitivity=0.9",
        "freeze_epochs=1",
        "mixup=0.4",
        "cutmix=0.4",
        "balanced_sampling=true",
        "label_smoothing=0.1",
        "optim.backbone_lr_mult=0.1",
    )
    run = train(cfg)
    for rel in RUN_FILES:
        assert (run / rel).is_file(), rel
    spec = json.loads((run / "model_spec.json").read_text())
    assert spec["task"] == "classification" and spec["classes"] == ["benign", "malignant"]
    assert spec["num_classes"] == 2 and spec["encoder"] is None
    assert isinstance(spec["temperature"], float) and 0.05 <= spec["temperature"] <= 100
    assert spec["decision"]["positive_class"] == "malignant" and spec["decision"]["target_sensitivity"] == 0.9
    assert 0.0 <= spec["decision"]["threshold"] <= 1.0
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert {"balanced_accuracy", "auc_macro", "ece", "ece_uncalibrated", "confusion_matrix"} <= set(metrics)
    assert metrics["temperature"] == spec["temperature"] and metrics["decision"]["val_sensitivity"] >= 0.9
    assert (
        load_checkpoint(run / "checkpoints" / "best.pt")["model_spec"]["temperature"] == spec["temperature"]
    )
    rows = read_rows(run)
    assert "val_balanced_accuracy" in rows[0]
    # stage 1 trains the head only at lr; stage 2 the backbone too, at lr * backbone_lr_mult
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    lrs = sorted({round(g["initial_lr"], 8) for g in last["optimizer"]["param_groups"]})
    assert lrs == [1e-4, 1e-3]


def test_decision_roots_join_validation_when_rules_are_fitted(synthetic_cls: Path, tmp_path: Path) -> None:
    other = make_synthetic_classification(tmp_path / "other", n_per_class=8, size=40, seed=7)
    run = train(cls_config(synthetic_cls, tmp_path, "epochs=1", "class_groups={bad: [malignant]}",
                           "group_sensitivity=0.9", f"decision_roots=[{other}]"))  # fmt: skip
    spec = json.loads((run / "model_spec.json").read_text())
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert metrics["calibrated_on"] == f"val + {other}"
    assert np.sum(metrics["decision_sources"][str(other)]["confusion_matrix"]) == 16
    pooled = metrics["pooled_fit"]["groups"][0]
    assert spec["groups"][0]["threshold"] == pooled["threshold"] and pooled["sensitivity"] >= 0.9
    assert np.sum(metrics["confusion_matrix"]) == len(json.loads((run / "split.json").read_text())["val"])
    # a folder whose labels are not the model's classes is refused, naming the label
    (other / "cyst").mkdir()
    shutil.copy(next((other / "benign").iterdir()), other / "cyst" / "x.png")
    with pytest.raises(MedlensError, match="cyst"):  # before training, not after it
        train(
            cls_config(synthetic_cls, tmp_path / "b", "epochs=1", "run_name=r", f"decision_roots=[{other}]")
        )
    assert not (tmp_path / "b" / "r" / "metrics.csv").exists()
    with pytest.raises(ConfigError, match="decision_roots"):
        load_config(None, ["data.task=segmentation", f"decision_roots=[{other}]"])


def test_segmentation_guided_classification(seg_run: Path, synthetic_cls: Path, tmp_path: Path) -> None:
    from medlens.inference.packaging import make_bundle

    bundle = make_bundle(seg_run, tmp_path / "seg-bundle")
    run = train(cls_config(synthetic_cls, tmp_path / "runs", "epochs=1", f"guide_bundle={bundle}",
                           "guide_mode=both"))  # fmt: skip
    spec = json.loads((run / "model_spec.json").read_text())
    assert spec["guide"] == {"bundle": str(bundle), "mode": "both"}
    assert spec["in_channels"] == 4 and len(spec["mean"]) == 4 and spec["mean"][-1] == 0.0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["in_channels"] == 3  # the image channels; the mask channel is added by the guide


def test_attention_loss_run(seg_run: Path, synthetic_cls: Path, tmp_path: Path) -> None:
    """cam_penalty: the guide's regions are cached with the training split, move with the augmentation, and
    the share of the evidence outside them is logged per epoch."""
    from medlens.inference.packaging import make_bundle

    bundle = make_bundle(seg_run, tmp_path / "seg-bundle")
    run = train(cls_config(synthetic_cls, tmp_path / "runs", "epochs=2", "data.input_size=[64,64]",
                           f"guide_bundle={bundle}", "cam_penalty=0.3", "augment.rotate_deg=30"))  # fmt: skip
    rows = read_rows(run)
    shares = [float(row["train_cam_outside"]) for row in rows]
    assert len(shares) == 2 and all(0.0 <= s <= 1.0 for s in shares)
    # the loss is the cross-entropy plus the weighted share, each measured apart by the learner's step
    for row, share in zip(rows, shares, strict=True):
        assert float(row["train_loss"]) == pytest.approx(float(row["train_ce"]) + 0.3 * share)
    assert yaml.safe_load((run / "config.yaml").read_text())["cam_penalty"] == 0.3
    with pytest.raises(ConfigError, match="guide_bundle"):
        load_config(None, ["data.task=classification", "cam_penalty=0.3"])
    with pytest.raises(ConfigError, match="no mixup"):
        load_config(
            None, ["data.task=classification", f"guide_bundle={bundle}", "cam_penalty=0.3", "mixup=0.2"]
        )


def test_early_stopping(synthetic_cls: Path, tmp_path: Path) -> None:
    cfg = cls_config(
        synthetic_cls,
        tmp_path,
        "epochs=6",
        "early_stopping_patience=1",
        "optim.lr=1e-12",
        "optim.warmup_epochs=0",
    )
    run = train(cfg)
    rows = read_rows(run)
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert "early stopping" in metrics["stop_reason"]
    # the weights barely move, so the score soon stops improving; training ends one validation after the best
    assert len(rows) == metrics["best_epoch"] + 1 < 6


def test_time_budget_stops_cleanly(synthetic_cls: Path, tmp_path: Path) -> None:
    run = train(cls_config(synthetic_cls, tmp_path, "epochs=50", "max_time_minutes=0.00001"))
    assert len(read_rows(run)) == 1
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert "time budget" in metrics["stop_reason"] and metrics["epochs_trained"] == 1
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "curves.png").is_file()


def test_too_few_images_is_a_clear_error(tmp_path: Path) -> None:
    root = make_synthetic_classification(tmp_path / "tiny", n_per_class=1)
    with pytest.raises(MedlensError, match="too few"):
        train(cls_config(root, tmp_path / "runs", "epochs=1", "data.val_fraction=0.5"))


def test_real_kvasir_images_one_epoch(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "kvasir_seg"
    ids = sorted(p.stem for p in (src / "images").iterdir())[:8]
    for sub in ("images", "masks"):
        (tmp_path / "kvasir" / sub).mkdir(parents=True)
        for i in ids:
            match = next((src / sub).glob(f"{i}.*"))
            shutil.copy(match, tmp_path / "kvasir" / sub / match.name)
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path / 'kvasir'}",
            f"out_dir={tmp_path / 'runs'}",
            "device=cpu",
            "data.input_size=[64,64]",
            "model.encoder=mobilenet_v2",
            "batch_size=4",
            "epochs=1",
            "data.val_fraction=0.25",
        ],
    )
    run = train(cfg)
    assert run.name.startswith("kvasir-unet-mobilenet_v2-")
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert metrics["n_images"] == 2 and 0.0 <= metrics["dice"] <= 1.0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["input_size"] == [64, 64] and plan["in_channels"] == 3


# ------------------------------------------------------------------------------------------------ helpers
def test_schedule_warmup_cosine_poly() -> None:
    cos = WarmupDecay(total_steps=110, warmup_steps=10, schedule="cosine", final_ratio=0.0)
    assert cos(0) == pytest.approx(1 / 11) and cos(9) == pytest.approx(10 / 11)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    poly = WarmupDecay(total_steps=100, warmup_steps=0, schedule="poly", final_ratio=0.1)
    assert poly(50) == pytest.approx(0.1 + 0.9 * 0.5**0.9)
    assert WarmupDecay(10, 0, "constant")(7) == 1.0
    with pytest.raises(ConfigError, match="valid: cosine, poly, constant"):
        WarmupDecay(10, 0, "step")


def test_sampler_shards_are_disjoint_and_seeded() -> None:
    shards = [batches.IndexSampler(20, 4, 2, seed=3, rank=r, world_size=2).epoch(5) for r in range(2)]
    assert all(s.shape == (2, 4) for s in shards)
    assert not set(shards[0].flatten().tolist()) & set(shards[1].flatten().tolist())
    again = batches.IndexSampler(20, 4, 2, seed=3, rank=0, world_size=2).epoch(5)
    assert torch.equal(again, shards[0])
    assert not torch.equal(
        batches.IndexSampler(20, 4, 2, seed=3).epoch(6), batches.IndexSampler(20, 4, 2, 3).epoch(5)
    )


def test_balanced_sampling_evens_classes() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    idx = batches.IndexSampler(100, 50, 20, 0, weights=batches.balanced_weights(labels, 2)).epoch(0).flatten()
    share = labels[idx].float().mean().item()
    assert 0.4 < share < 0.6  # 10% of the data, half of the draws


def test_mix_batch_soft_targets() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0)):
        mixed, soft = batches.mix_batch(x, y, 3, mixup, cutmix)
        assert mixed.shape == x.shape and soft.shape == (6, 3)
        assert torch.allclose(soft.sum(1), torch.ones(6)) and (soft >= 0).all()


def test_dice_iou_match_numpy_metrics() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((3, 1, 16, 16)) > 0.6
    pred = rng.random((3, 1, 16, 16)) > 0.5
    target[2], pred[2] = False, False  # empty-empty counts as perfect
    logits = torch.from_numpy(np.where(pred, 5.0, -5.0)).float()
    d, i = dice_iou(logits, torch.from_numpy(target).float(), "binary")
    for k in range(3):
        assert d[k].item() == pytest.approx(np_dice(pred[k, 0], target[k, 0]), abs=1e-6)
        assert i[k].item() == pytest.approx(np_iou(pred[k, 0], target[k, 0]), abs=1e-6)
    multi = torch.tensor([[[0, 1], [2, 2]]])
    d, _ = dice_iou(torch.nn.functional.one_hot(multi, 3).permute(0, 3, 1, 2).float(), multi, "multiclass")
    assert d.item() == pytest.approx(1.0)


def test_rng_state_round_trip() -> None:
    seed_everything(1)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_positive_class_and_decision() -> None:
    assert positive_class(["normal", "pneumonia"], None) == "pneumonia"
    assert positive_class(["melanoma", "nevus"], None) == "melanoma"
    with pytest.raises(ConfigError, match="not a class"):
        positive_class(["a", "b"], "c")
    logits = np.array([[2.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [0.5, 0.4]])
    y = np.array([0, 0, 1, 1, 1])
    update, metrics = classification_report(logits, y, ["normal", "pneumonia"], True, 1.0, None)
    assert update["decision"].positive_class == "pneumonia"
    assert metrics["decision"]["val_sensitivity"] == 1.0
    assert update["temperature"] == metrics["temperature"] > 0


def test_amp_dtype_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("fp32", cpu) is None
    with pytest.raises(ConfigError, match="fp16 autocast is for CUDA"):
        amp_dtype("fp16", cpu)
    monkeypatch.setattr(optim, "cpu_has_fast_bf16", lambda: True)
    assert amp_dtype("auto", cpu) is torch.bfloat16 and precision_name(amp_dtype("auto", cpu)) == "bf16"
    monkeypatch.setattr(optim, "cpu_has_fast_bf16", lambda: False)
    assert amp_dtype("auto", cpu) is None and precision_name(None) == "fp32"


def _budget_trainer(budget_min: float, epoch_s: float, done: int, elapsed_s: float):
    """A Trainer with just the parts that ``fit_schedule_to_budget`` reads (no data, no network): its loop
    state and time budget, the data's steps per epoch and the learner's schedule."""
    import time
    from types import SimpleNamespace

    from medlens.training.schedule import create_scheduler
    from medlens.training.trainer import Trainer

    t = Trainer(load_config(None, ["epochs=20", f"max_time_minutes={budget_min}", "device=cpu"]))
    t.epoch, t.history = done, [{"epoch": e + 1, "time_s": epoch_s} for e in range(done)]
    t.budget.start = time.monotonic() - elapsed_s
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    t.data = SimpleNamespace(steps_per_epoch=10)
    t.learner = SimpleNamespace(scheduler=create_scheduler(opt, "cosine", total_steps=200, warmup_steps=5))
    return t


def test_time_budget_shortens_the_schedule() -> None:
    # 10 min budget, 2 epochs of 100 s done (190 s): 410 s left -> 4 more epochs, 6 planned instead of 20
    t = _budget_trainer(budget_min=10, epoch_s=100, done=2, elapsed_s=190)
    assert t.budget.epochs_that_fit(2, 20, [100.0, 100.0]) == 6 and not t.budget.is_up()
    t.fit_schedule_to_budget()
    assert t.planned_epochs == 6 and t.stop_reason is None
    fn = t.learner.scheduler.lr_lambdas[0]
    assert fn.total_steps == 60 and fn(60) == pytest.approx(0.0)  # the decay now ends with the budget
    # a budget that holds the whole run changes nothing
    t = _budget_trainer(budget_min=100, epoch_s=100, done=2, elapsed_s=200)
    t.fit_schedule_to_budget()
    assert t.planned_epochs == 20 and t.learner.scheduler.lr_lambdas[0].total_steps == 200
    # no further epoch fits: stop now, saying why
    t = _budget_trainer(budget_min=5, epoch_s=100, done=2, elapsed_s=250)
    t.fit_schedule_to_budget()
    assert t.stop_reason and "budget" in t.stop_reason
    assert TimeBudget(None).epochs_that_fit(2, 20, [1e6]) == 20 and not TimeBudget(None).is_up()
    # one epoch slowed by a passing load (epochs of 100, 100, 400 s) is judged by the median, not the spike:
    # 60 min budget, 600 s spent -> 30 more epochs of 100 s fit, so the plan of 20 stands
    t = _budget_trainer(budget_min=60, epoch_s=100, done=3, elapsed_s=600)
    t.history[-1]["time_s"] = 400.0
    t.fit_schedule_to_budget()
    assert t.planned_epochs == 20 and t.stop_reason is None
    # ... and so is a slow second epoch before three are in (488 and 1095 s once cut a run of 24 to 8)
    assert TimeBudget(None).epoch_seconds([488.0, 1095.0]) == 488.0
    assert TimeBudget(None).epoch_seconds([488.0, 1095.0, 284.0, 290.0]) == 290.0


def test_an_epochs_time_covers_its_share_of_validation() -> None:
    """With val_every=2 every other epoch validates (100 s without, 160 s with): an epoch takes 130 s on
    average, judged by whole validation cycles; the median of the last three epochs said 100 s."""
    budget = TimeBudget(None, val_every=2)
    assert budget.epoch_seconds([100.0, 160.0, 100.0, 160.0, 100.0]) == 130.0  # two cycles in: the fastest
    assert budget.epoch_seconds([160.0, 100.0, 160.0, 100.0, 160.0]) == 130.0
    assert budget.epoch_seconds([100.0, 160.0, 100.0, 160.0, 100.0, 160.0]) == 130.0  # three: the median
    # a cycle slowed by a passing load (an epoch of 400 s) is not the plan's
    assert budget.epoch_seconds([100.0, 160.0, 100.0, 400.0, 100.0, 160.0]) == 130.0
    assert budget.epoch_seconds([100.0, 160.0]) == 100.0  # fewer than three epochs: the fastest
    # val_every=5: no whole cycle in, the fastest epoch; then the fastest cycle
    assert TimeBudget(None, val_every=5).epoch_seconds([100.0] * 4) == 100.0
    assert TimeBudget(None, val_every=5).epoch_seconds([100.0] * 4 + [300.0, 100.0]) == 140.0
    # the trainer's budget counts its config's validations
    from medlens.training.trainer import Trainer

    trainer = Trainer(load_config(None, ["val_every=2", "device=cpu"]))
    assert trainer.budget.epoch_seconds([100.0, 160.0, 100.0, 160.0]) == 130.0


def test_validator_keeps_the_best_epoch_and_counts_for_early_stopping() -> None:
    from types import SimpleNamespace

    from medlens.training.distributed import DistInfo
    from medlens.training.selection import Validator

    data = SimpleNamespace(dist=DistInfo(), device=torch.device("cpu"), is_seg=False)
    v = Validator(data, learner=None)
    assert v.record(1, {"val_balanced_accuracy": 0.5}) and not v.record(2, {})  # not validated: no count
    assert not v.record(3, {"val_balanced_accuracy": 0.4}) and (v.best_epoch, v.bad_epochs) == (1, 1)
    assert v.patience_spent(1) and not v.patience_spent(2) and not v.patience_spent(None)
    restored = Validator(data, learner=None)
    restored.load_state_dict(v.state_dict())
    assert restored.state_dict() == {"best_score": 0.5, "best_epoch": 1, "bad_epochs": 1}


def test_partially_labelled_source_trains_with_merged_classes(tmp_path: Path) -> None:
    """A 3-class root beside a root whose binary masks only say "class a or b" (data.partial_roots)."""
    full = make_synthetic_segmentation(tmp_path / "full", n=12, seed=3)
    for path in (full / "masks").iterdir():  # disc -> left half class 1, right half class 2
        mask = np.array(Image.open(path)) > 0
        labels = np.zeros(mask.shape, np.uint8)
        labels[:, : mask.shape[1] // 2][mask[:, : mask.shape[1] // 2]] = 1
        labels[:, mask.shape[1] // 2 :][mask[:, mask.shape[1] // 2 :]] = 2
        Image.fromarray(labels).save(path)
    lungs_only = make_synthetic_segmentation(tmp_path / "lungs_only", n=12, seed=4)
    cfg = seg_config(full, tmp_path / "runs", "epochs=1", "data.mode=multiclass", "data.classes=[bg, a, b]",
                     f"data.partial_roots={{{lungs_only}: {{0: [bg], 1: [a, b]}}}}",
                     "data.test_fraction=0.2")  # fmt: skip
    run = train(cfg)
    row = read_rows(run)[0]
    assert 0.0 <= float(row["val_dice_lungs_only"]) <= 1.0 and 0.0 <= float(row["val_dice_full"]) <= 1.0
    spec = json.loads((run / "model_spec.json").read_text())
    assert spec["num_classes"] == 3 and spec["classes"] == ["bg", "a", "b"]
    assert json.loads((run / "test_metrics.json").read_text())["n_images"] > 0
    with pytest.raises(ConfigError, match="are not classes"):
        train(seg_config(full, tmp_path / "r2", "data.mode=multiclass", "data.classes=[bg, a, b]",
                         f"data.partial_roots={{{lungs_only}: {{1: [lung]}}}}"))  # fmt: skip
