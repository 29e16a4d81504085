"""Training throughput: a typical DataLoader loop vs medlens's trainer path (fp32 and bf16), one run.

(a) naive: a ``torch.utils.data.Dataset`` that decodes the JPEG/PNG files with PIL and resizes them every
    step, random flips + rotation with ``torchvision.transforms.v2`` on the CPU, a ``DataLoader`` with
    ``--num-workers`` processes, fp32, NCHW.
(b) medlens-fp32 / medlens-bf16: ``medlens.training.trainer.Trainer`` itself: ``on_train_start()`` (discover,
    plan, split, uint8 in-memory cache, model, optimizer, loss, kornia augmenter), then its ``train_step``
    over its own ``IndexSampler`` batches: augmentation on the training device, channels_last, with
    ``amp=fp32`` and ``amp=bf16`` (bf16 autocast; on CPUs with AVX512-BF16/AMX that is what ``amp: auto``
    picks).

All train the same U-Net (smp, random init; ``--encoder``, light decoder with ``--light-decoder``) with
medlens's ``dice_ce`` loss and AdamW. Steady-state images/s
are timed after ``--warmup`` steps; medlens's one-off cache build is reported apart. Also: FLOPs of one step
(``FlopCounterMode``) and the achieved FLOP/s against a measured matmul rate (bf16 8192^3 on CUDA, fp32 1024^3
on the CPU), the medlens step split into batch preparation vs the rest, and on CUDA (or with ``--profile``)
GPU utilisation and a ``torch.profiler`` summary.

    .venv/bin/python -m benchmarks.train_throughput --out BENCHMARKS.md          # CPU: 128 px, batch 8
    .venv/bin/python -m benchmarks.train_throughput --size 352 --batch 16 --steps 50 # CUDA defaults
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/train_throughput.py` as well as `python -m ...`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    SHARED_DATASETS,
    command_line,
    machine_info,
    machine_line,
    md_table,
    ratio,
    update_section,
    write_json,
)
from benchmarks.perf import matmul_rate, profile_summary, step_flops, sync, timed_steps

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PATHS = ("naive", "medlens-fp32", "medlens-bf16")
LIGHT_DECODER = [128, 64, 32, 16, 16]


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"decoder_channels": LIGHT_DECODER} if args.light_decoder else {}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        default=str(SHARED_DATASETS / "kvasir_seg"),
        help="segmentation folder (images/ + masks/); default: Kvasir-SEG from ../shared/datasets",
    )
    p.add_argument(
        "--synthetic", action="store_true", help="write synthetic JPEG/PNG pairs instead of --data"
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=0 if cuda else 160,
        help="use the first N image/mask pairs (0 = all; default: all on CUDA, 160 on the CPU)",
    )
    p.add_argument("--size", type=int, default=352 if cuda else 128, help="input size (square)")
    p.add_argument("--batch", type=int, default=16 if cuda else 8)
    p.add_argument("--steps", type=int, default=50 if cuda else 8, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=5 if cuda else 2, help="untimed steps per path first")
    p.add_argument(
        "--num-workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader worker processes of the naive loop (and medlens cache threads)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="torch.profiler summary also on the CPU")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--encoder", default="resnet34", help="U-Net encoder (e.g. mobilenet_v2)")
    p.add_argument("--light-decoder", action="store_true", help="decoder_channels [128, 64, 32, 16, 16]")
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/train.json)")
    p.add_argument("--out", default=None, help="markdown file whose 'train' section is replaced/appended")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ data
def subset_folder(src: Path, dst: Path, n: int) -> tuple[Path, int]:
    """``dst/images`` + ``dst/masks`` with symlinks to the first ``n`` (0 = all) pairs of ``src``."""
    from medlens.data.io import IMAGE_EXTENSIONS

    masks = {p.stem: p for p in (src / "masks").iterdir()}
    images = sorted(
        p for p in (src / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem in masks
    )
    images = images[:n] if n else images
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for img in images:
        (dst / "images" / img.name).symlink_to(img.resolve())
        (dst / "masks" / masks[img.stem].name).symlink_to(masks[img.stem].resolve())
    return dst, len(images)


def synthetic_folder(dst: Path, n: int, seed: int = 0) -> tuple[Path, int]:
    """``n`` colonoscopy-sized (720x576) JPEG images with PNG masks of a bright blob."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    h, w = 576, 720
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.25) * h
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        img = rng.normal(110, 25, (h, w, 3)) * np.array([1.0, 0.7, 0.6])
        img[mask] += 70
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(dst / "images" / f"s{i:04d}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(dst / "masks" / f"s{i:04d}.png")
    return dst, n


class FileSegDataset:
    """The typical per-step pipeline: PIL decode + resize, torchvision v2 flips/rotation, float normalise."""

    def __init__(self, root: Path, size: int) -> None:
        from torchvision.transforms import v2

        self.images = sorted((root / "images").iterdir())
        masks = {p.stem: p for p in (root / "masks").iterdir()}
        self.masks = [masks[p.stem] for p in self.images]
        self.size = size
        self.geometric = v2.Compose(
            [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomRotation(180)]
        )
        self.to_float = v2.Compose(
            [v2.ToDtype(__import__("torch").float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch
        from PIL import Image
        from torchvision import tv_tensors

        s = (self.size, self.size)
        img = Image.open(self.images[i]).convert("RGB").resize(s, Image.Resampling.BILINEAR)
        mask = Image.open(self.masks[i]).convert("L").resize(s, Image.Resampling.NEAREST)
        x = tv_tensors.Image(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        y = tv_tensors.Mask(torch.from_numpy((np.asarray(mask) > 127).astype(np.uint8))[None])
        x, y = self.geometric(x, y)
        return self.to_float(x).as_subclass(torch.Tensor), y.as_subclass(torch.Tensor).float()


# ------------------------------------------------------------------------------------------------ paths
def run_naive(args: argparse.Namespace, root: Path, device: Any) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from medlens.models.factory import create_model
    from medlens.training.losses import create_loss

    torch.manual_seed(0)
    ds = FileSegDataset(root, args.size)
    loader = DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )
    model = create_model("segmentation", "unet", args.encoder, 3, 1, **model_kwargs(args)).to(device).train()
    loss_fn = create_loss("dice_ce", "segmentation", "binary").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def batches() -> Any:
        while True:
            yield from loader

    it = batches()

    def step() -> int:
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return int(x.shape[0])

    out = timed_steps(step, args.warmup, args.steps, device)
    x, y = next(it)
    out["flops_per_step"] = step_flops(model, x.to(device), y.to(device), loss_fn, nullcontext)
    return {
        **out,
        "precision": "fp32",
        "memory_format": "NCHW",
        "augment": "PIL decode + resize, torchvision v2 hflip/vflip/rotate(180) per sample on the CPU, "
        f"DataLoader num_workers={args.num_workers}",
    }


def build_trainer(args: argparse.Namespace, root: Path, work: Path, device: Any, amp: str) -> Any:
    from medlens.config import DataConfig, ModelConfig, TrainConfig
    from medlens.training.trainer import Trainer

    cfg = TrainConfig(
        data=DataConfig(
            root=str(root),
            task="segmentation",
            mode="binary",
            input_size=[args.size, args.size],
            val_fraction=0.1,
        ),
        model=ModelConfig(arch="unet", encoder=args.encoder, pretrained=False, kwargs=model_kwargs(args)),
        amp=amp,
        epochs=1,
        batch_size=args.batch,
        steps_per_epoch=args.warmup + args.steps,
        device=str(device),
        out_dir=str(work / "runs"),
        run_name=f"bench-{amp}",
        num_workers=args.num_workers,
        early_stopping_patience=None,
    )
    return Trainer(cfg)


def run_medlens(args: argparse.Namespace, root: Path, work: Path, device: Any, amp: str) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    trainer = build_trainer(args, root, work, device, amp)
    t0 = time.perf_counter()
    trainer.on_train_start()
    setup_s = time.perf_counter() - t0
    data, learner = trainer.data, trainer.learner
    learner.model.train()

    def cycle() -> Any:
        epoch = 0
        while True:
            yield from data.sampler.epoch(epoch)
            epoch += 1

    batches = cycle()

    def step() -> int:
        idx = next(batches)
        trainer.train_step(idx)
        return len(idx)

    timing = timed_steps(step, args.warmup, args.steps, device)
    # what the step is made of: batch preparation (index the cache, float, augment, normalise) vs the rest
    prep = []
    for _ in range(3):
        idx = next(batches)
        sync(device)
        t0 = time.perf_counter()
        data.get_batch(data.train, idx, augment=True)
        sync(device)
        prep.append(time.perf_counter() - t0)
    x, y, _ = data.get_batch(data.train, next(batches), augment=True)
    flops = step_flops(learner.model, x, y, learner.loss_fn, learner.autocast)
    out = {
        **timing,
        "flops_per_step": flops,
        "batch_prep_ms_p50": round(1000 * float(np.median(prep)), 1),
        "setup_s": round(setup_s, 1),
        "cache_device": str(data.train.images.device),
        "train_images_cached": len(data.train.ids),
        "precision": str(learner.amp_dtype).replace("torch.", "") if learner.amp_dtype else "fp32",
        "memory_format": "channels_last" if trainer.cfg.channels_last else "NCHW",
        "augment": "uint8 cache, kornia GpuAugmenter on the training device ("
        + ", ".join(f"{k}={v}" for k, v in trainer.cfg.augment.to_dict().items() if v)
        + ")",
    }
    if device.type == "cuda" or args.profile:
        out["profile"] = profile_summary(lambda: trainer.train_step(next(batches)), device)
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "## Training throughput: naive DataLoader loop vs medlens trainer",
        "",
        f"What: U-Net/{s['encoder']} (random init{', light decoder' if s['light_decoder'] else ''}), "
        f"{s['size']}x{s['size']}, batch {s['batch']}, {s['steps']} timed steps after {s['warmup']} warm-up "
        f"steps per path, on {res['device']}; same loss (dice_ce) and AdamW. "
        "(a) naive: PIL decode + resize and torchvision v2 augmentation per sample in a DataLoader, fp32; "
        "(b) medlens: `Trainer.on_train_start()` then its `train_step` (uint8 in-memory cache, kornia "
        "augmentation on the device, channels_last), with `amp=fp32` and with `amp=bf16`.",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {machine_line(res['machine'])}; torch threads {s['threads']}; "
        f"load average before/after: {res['load_before']} / {res['load_after']}",
        f"- Data: {res['data']}",
        "",
    ]
    head = ["path", "images/s", "step p50 ms", "precision", "memory format", "GFLOP/step",
            "achieved GFLOP/s", "% of matmul rate", "GPU util %"]  # fmt: skip
    keys = ("images_per_s", "step_ms_p50", "precision", "memory_format")
    rows = [
        [name, *(r[k] for k in keys), round(r["flops_per_step"] / 1e9, 1), r["achieved_gflops"],
         r["pct_of_matmul_rate"], r["gpu_util_mean"] if r["gpu_util_mean"] is not None else "not measured"]
        for name in PATHS if (r := res.get(name))
    ]  # fmt: skip
    lines += [md_table(head, rows), ""]
    for key, text in (("speedup_medlens_vs_naive", "medlens (fp32) / naive"),
                      ("speedup_bf16_vs_naive", "medlens (bf16) / naive"),
                      ("speedup_bf16_vs_fp32", "medlens bf16 / medlens fp32")):  # fmt: skip
        if res.get(key) is not None:
            lines += [f"{text} images/s: **{res[key]}x**", ""]
    m = res.get("medlens-bf16") or res.get("medlens-fp32")
    if m:
        lines += [
            f"medlens details: one-off setup (discover, plan, split, uint8 cache of "
            f"{m['train_images_cached']} train images on {m['cache_device']}) {m['setup_s']} s; batch "
            f"preparation (cache -> float -> augment -> normalise) {m['batch_prep_ms_p50']} ms of a "
            f"{m['step_ms_p50']} ms step; augmentation: {m['augment']}.",
            "",
        ]
    lines += [
        f"Matmul rate measured: {res['matmul']['what']} = {res['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s."
    ]
    if m and m.get("profile"):
        lines += [
            "",
            f"torch.profiler, medlens step, top ops by {m['profile']['sorted_by']} (ms per step):",
            "",
            md_table(
                ["op", "calls (5 steps)", "self ms per step", "share of self time"],
                [[t["op"], t["calls"], t["self_ms"], t["share"]] for t in m["profile"]["top"]],
            ),
        ]
    if not res["cuda"]:
        lines += [
            "",
            "CUDA parts (352x352 batch 16, bf16, GPU utilisation, FLOP/s against bf16 8192^3, "
            "profiler on the GPU): not measured: no GPU lent to this task.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    with tempfile.TemporaryDirectory(prefix="medlens-train-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        load_before = round(os.getloadavg()[0], 2)
        if args.synthetic or not (Path(args.data) / "images").is_dir():
            n = args.max_images or 160
            root, count = synthetic_folder(work / "data", n)
            data_desc = f"{count} synthetic 720x576 JPEG images + PNG masks"
        else:
            root, count = subset_folder(Path(args.data), work / "data", args.max_images)
            data_desc = f"first {count} image/mask pairs of {args.data} (JPEG/PNG files at native size)"
        res: dict[str, Any] = {
            "benchmark": "train_throughput",
            "command": command_line("benchmarks.train_throughput", argv),
            "machine": machine_info(),
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU",
            "cuda": device.type == "cuda",
            "data": data_desc,
            "settings": {
                "size": args.size,
                "batch": args.batch,
                "steps": args.steps,
                "warmup": args.warmup,
                "num_workers": args.num_workers,
                "threads": torch.get_num_threads(),
                "encoder": args.encoder,
                "light_decoder": args.light_decoder,
            },
            "load_before": load_before,
        }
        res["matmul"] = matmul_rate(device)
        if "naive" in args.paths:
            res["naive"] = run_naive(args, root, device)
        for amp in ("fp32", "bf16"):
            if f"medlens-{amp}" in args.paths:
                res[f"medlens-{amp}"] = run_medlens(args, root, work, device, amp)
        for name in PATHS:
            if name in res:
                r = res[name]
                achieved = r["flops_per_step"] * r["images_per_s"] / args.batch
                r["achieved_gflops"] = round(achieved / 1e9, 1)
                r["pct_of_matmul_rate"] = round(100 * achieved / res["matmul"]["flops_per_s"], 1)
        for key, a, b in (("speedup_medlens_vs_naive", "medlens-fp32", "naive"),
                          ("speedup_bf16_vs_naive", "medlens-bf16", "naive"),
                          ("speedup_bf16_vs_fp32", "medlens-bf16", "medlens-fp32")):  # fmt: skip
            if a in res and b in res:
                res[key] = ratio(res[a]["images_per_s"], res[b]["images_per_s"])
        res["load_after"] = round(os.getloadavg()[0], 2)
    md = markdown(res)
    print(md)
    print(f"JSON: {write_json(args.json or RESULTS / 'train.json', res)}")
    if args.out:
        print(f"section 'train' written to {update_section(args.out, 'train', md)}")
    return res


if __name__ == "__main__":
    main()
