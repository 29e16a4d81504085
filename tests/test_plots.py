"""Plots write readable PNGs; overlays are checked pixel by pixel."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.drawing import PALETTE, overlay_mask
from medlens.errors import MedlensError
from medlens.evaluation.plots import (
    plot_confusion_matrix,
    plot_label_counts_over_time,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
    save_case_grid,
)


def _png_size(path: Path) -> tuple[int, int]:
    assert path.exists() and path.suffix == ".png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_training_curves_from_metrics_csv(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,lr,train_loss,val_loss,val_dice\n"
        "1,0.001,0.9,0.8,0.40\n"
        "2,0.0008,0.7,,\n"  # no validation this epoch
        "3,0.0002,0.5,0.6,0.65\n"
    )
    out = plot_training_curves(csv, tmp_path / "sub" / "curves.png")
    width, height = _png_size(out)
    assert width > 2 * height  # three panels side by side
    only_loss = tmp_path / "loss.csv"
    only_loss.write_text("epoch,train_loss\n1,0.5\n2,0.4\n")
    _png_size(plot_training_curves(only_loss, tmp_path / "loss.png"))
    with pytest.raises(MedlensError, match=r"missing\.csv"):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
    (tmp_path / "empty.csv").write_text("epoch,lr\n")
    with pytest.raises(MedlensError, match="no epoch rows"):
        plot_training_curves(tmp_path / "empty.csv", tmp_path / "x.png")


def test_classification_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    probs = rng.dirichlet(np.ones(3), size=60)
    classes = ["nevus", "melanoma", "seborrheic_keratosis"]
    _png_size(plot_confusion_matrix([[5, 1, 0], [2, 3, 1], [0, 0, 0]], classes, tmp_path / "cm.png"))
    _png_size(
        plot_confusion_matrix(np.eye(3, dtype=int) * 4, classes, tmp_path / "cm_raw.png", normalize=False)
    )
    _png_size(plot_roc_curves(y, probs, classes, tmp_path / "roc.png"))
    yb = rng.integers(0, 2, size=40)
    _png_size(
        plot_roc_curves(yb, rng.dirichlet(np.ones(2), size=40), ["normal", "pneumonia"], tmp_path / "b.png")
    )
    _png_size(plot_reliability_diagram(probs, y, tmp_path / "reliability.png", n_bins=10))
    with pytest.raises(MedlensError, match="does not match"):
        plot_confusion_matrix(np.eye(2), classes, tmp_path / "bad.png")


def test_overlay_mask_pixels() -> None:
    image = np.full((6, 6, 3), 100, np.uint8)
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:5] = 1
    mask[0, 5] = 2
    out = overlay_mask(image, mask, alpha=0.5, contour=False)
    assert out.dtype == np.uint8 and out.shape == (6, 6, 3)
    green = np.array(PALETTE[0])
    assert out[2, 2].tolist() == np.round(0.5 * 100 + 0.5 * green).astype(int).tolist()
    assert out[0, 5].tolist() == np.round(0.5 * 100 + 0.5 * np.array(PALETTE[1])).astype(int).tolist()
    assert out[5, 0].tolist() == [100, 100, 100]  # background untouched
    with_contour = overlay_mask(image, mask, alpha=0.5)
    assert with_contour[1, 1].tolist() == list(PALETTE[0])  # boundary drawn opaque
    assert with_contour[2, 2].tolist() == out[2, 2].tolist()  # interior only blended
    assert with_contour[5, 5].tolist() == [100, 100, 100]
    big = np.zeros((9, 9), np.uint8)
    big[1:8, 1:8] = 1
    thick = overlay_mask(np.full((9, 9, 3), 100, np.uint8), big, alpha=0.5, thickness=2)
    assert thick[1, 1].tolist() == thick[2, 2].tolist() == list(PALETTE[0])  # two-pixel band
    assert thick[4, 4].tolist() == out[2, 2].tolist()


def test_overlay_mask_variants() -> None:
    gray = np.zeros((5, 5, 1), np.uint8)
    single = overlay_mask(gray, np.ones((5, 5), bool), alpha=1.0, colors=(10, 20, 30))
    assert single.shape == (5, 5, 3) and (single == [10, 20, 30]).all()
    multilabel = np.zeros((5, 5, 2), np.uint8)
    multilabel[0, 0, 0] = 1
    multilabel[4, 4, 1] = 1
    out = overlay_mask(np.zeros((5, 5), np.uint8), multilabel, alpha=1.0, colors=[(1, 2, 3), (4, 5, 6)])
    assert (
        out[0, 0].tolist() == [1, 2, 3]
        and out[4, 4].tolist() == [4, 5, 6]
        and out[2, 2].tolist() == [0, 0, 0]
    )
    with pytest.raises(MedlensError, match="does not match"):
        overlay_mask(gray, np.zeros((4, 5)))
    with pytest.raises(MedlensError, match="uint8"):
        overlay_mask(gray.astype(np.float32), np.zeros((5, 5)))


def test_case_grid_and_history_plot(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    gt = np.zeros((32, 32), np.uint8)
    gt[8:20, 8:20] = 1
    pred = np.roll(gt, 4, axis=1)
    out = save_case_grid(
        [(image, gt, pred, "worst: dice 0.67"), (image, None, gt, "no ground truth")], tmp_path / "g.png"
    )
    width, height = _png_size(out)
    assert height > width / 4 * 1.5  # two rows of four panels
    with pytest.raises(MedlensError, match="no cases"):
        save_case_grid([], tmp_path / "empty.png")
    records = [
        (datetime(2025, 1, 1, 9), "nevus"),
        ("2025-01-01T10:00:00", "melanoma"),
        (datetime(2025, 1, 3), "nevus"),
    ]
    _png_size(plot_label_counts_over_time(records, tmp_path / "history.png"))


def test_overlay_on_a_real_image(shared_datasets: Path) -> None:
    folder = shared_datasets / "kvasir_seg"
    image_path = sorted((folder / "images").iterdir())[0]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    mask = np.asarray(Image.open(folder / "masks" / f"{image_path.stem}.png")) > 0
    out = overlay_mask(image, mask)
    assert out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])  # only the polyp changes
    assert (out[mask] != image[mask]).any()
