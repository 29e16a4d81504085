"""Write the data of the modality classifier: dermoscopy / endoscopy / chest_xray / fundus / other.

One classification folder for ``configs/cpu/modality.yaml``: ``DST/images/`` (symlinks to the shared files,
PNG files for what is generated), ``DST/labels.csv`` (``id, label, group, source, origin``) and
``DST/split.json``. At most ``--per-class`` images a class (default 500), an equal share from each collection:

- dermoscopy: HAM10000 (one image a lesion first) and ISIC 2017;
- endoscopy: Kvasir-SEG and CVC-ClinicDB (spread over its video sequences);
- chest_xray: Kermany (one film a patient first), Shenzhen and JSRT;
- fundus: DRIVE's 40 photographs and scikit-image's ``retina`` photograph, too few to learn from: each is also
  written as augmented copies (rotation, mirror, zoom, colour balance, gamma, blur, size), about 0.6 x
  ``--per-class`` in all;
- other: scikit-image's own images (``skimage/data``: photographs, textures, a page of text, microscopy,
  histology, the Shepp-Logan phantom, ...; its ``retina`` is fundus, and ``microaneurysms``, a grey close-up
  of a retina, is left out of both) with crops and recolourings of each; a few of its LFW faces; the masks of
  images the other classes did not take (an uploaded mask must not pass for a film); and synthetic images
  (``synthetic_images.py`` beside this file: uniform, noise, gradients, text screenshots, shapes, CT-like
  phantoms, stripes and grids).

``group`` keeps an image with its copies (and a lesion's, a patient's, a video's images) on one side of the
split; ``source`` names the collection or the kind of generated image, and ``split.json`` (70 / 15 / 15,
seeded) is grouped and stratified by it, so that every source has held-out images to be judged on
(``per-source`` below reads an evaluation's ``predictions.csv`` and prints the accuracy per source):

    .venv/bin/python configs/cpu/splits/modality.py ../shared/datasets runs/modality
    OMP_NUM_THREADS=1 .venv/bin/medlens train --config configs/cpu/modality.yaml --out runs --name modality
    .venv/bin/python configs/cpu/splits/modality.py per-source eval/modality-test runs/modality
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from synthetic_images import SYNTHETIC, picture_size  # beside this file

from medlens.data.tables import kermany_patient  # the trainer's own patient rule for Kermany ids

CLASSES = ("chest_xray", "dermoscopy", "endoscopy", "fundus", "other")
# label -> (collection, table, group of a row); an equal share of the class from each
COLLECTIONS: dict[str, list[tuple[str, str, Callable[[dict], str]]]] = {
    "dermoscopy": [("ham10000", "labels.csv", lambda r: r["lesion_id"]),
                   ("isic2017_seg", "labels.csv", lambda r: r["id"])],
    "endoscopy": [("kvasir_seg", "metadata.csv", lambda r: r["id"]),
                  ("cvc_clinicdb", "metadata.csv", lambda r: r["video_sequence"])],
    "chest_xray": [("chestxray_pneumonia", "labels.csv", lambda r: kermany_patient(r["id"]) or r["id"]),
                   ("cxr_lungs_shenzhen", "labels.csv", lambda r: r["id"]),
                   ("cxr_lungs_jsrt", "labels.csv", lambda r: r["id"])],
}  # fmt: skip
MASKED = ("ham10000", "isic2017_seg", "kvasir_seg", "cvc_clinicdb", "cxr_lungs_shenzhen", "cxr_lungs_jsrt")
SKIMAGE_LEFT_OUT = {"retina.jpg": "fundus", "microaneurysms.png": "a grey close-up of a retina"}
OTHER_SHARES = {"skimage": 0.40, "lfw": 0.05, "masks": 0.10}  # the rest of "other" is synthetic
FUNDUS_SHARE = 0.6


# ---------------------------------------------------------------------------------------------- helpers
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else {}


def _spread(rows: list[dict], n: int, group_of: Callable[[dict], str], rng: random.Random) -> list[dict]:
    """``n`` rows, one a group before a second of any group (groups and rows in seeded order)."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_group[group_of(row)].append(row)
    order = sorted(by_group)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(by_group[g])
    picked: list[dict] = []
    for depth in range(max((len(v) for v in by_group.values()), default=0)):
        picked += [by_group[g][depth] for g in order if len(by_group[g]) > depth][: n - len(picked)]
    return picked


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _rgb(image: Image.Image) -> Image.Image:
    """RGB (RGBA composited onto white; grey replicated)."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _bounded(image: Image.Image, side: int = 512) -> Image.Image:
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR) \
        if scale < 1 else image  # fmt: skip


# ---------------------------------------------------------------------------------------------- copies
def fundus_copy(image: Image.Image, rng: random.Random) -> Image.Image:
    """A fundus photograph as another camera might give it: turned, mirrored, zoomed, another colour balance,
    gamma and sharpness, another size."""
    out = image.rotate(rng.uniform(0, 360), resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    out = ImageOps.mirror(out) if rng.random() < 0.5 else out
    s = rng.uniform(0.75, 1.0)
    w, h = out.size
    x0, y0 = rng.uniform(0, (1 - s) * w), rng.uniform(0, (1 - s) * h)
    out = out.crop((round(x0), round(y0), round(x0 + s * w), round(y0 + s * h)))
    side = rng.randint(256, 640)
    out = out.resize((side, side), Image.BILINEAR).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    arr = np.asarray(out, np.float32) / 255.0
    arr = arr ** rng.uniform(0.7, 1.4) * np.array([rng.uniform(0.8, 1.2) for _ in range(3)], np.float32)
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


def recoloured_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop of a picture, turned or mirrored, in other colours (grey, inverted, channels swapped, tinted or
    a false-colour map), at another size."""
    w, h = image.size
    s = rng.uniform(0.4, 1.0)
    x0, y0 = rng.uniform(0, (1 - s) * w), rng.uniform(0, (1 - s) * h)
    out = _rgb(image.crop((round(x0), round(y0), round(x0 + s * w), round(y0 + s * h))))
    out = out.rotate(90 * rng.randint(0, 3), expand=True)
    out = ImageOps.mirror(out) if rng.random() < 0.5 else out
    arr = np.asarray(out, np.float32)
    how = rng.choice(("grey", "invert", "swap", "tint", "false"))
    if how == "grey":
        arr = np.repeat(arr.mean(axis=2, keepdims=True), 3, axis=2)
    elif how == "invert":
        arr = 255.0 - arr
    elif how == "swap":
        arr = arr[..., rng.sample(range(3), 3)]
    elif how == "tint":
        arr = arr * np.array([rng.uniform(0.5, 1.3) for _ in range(3)], np.float32)
    else:
        lut = np.stack([np.interp(np.arange(256), [0, 128, 255], sorted(rng.sample(range(256), 3)))
                        for _ in range(3)], axis=1)  # fmt: skip
        arr = lut[arr.mean(axis=2).astype(np.uint8)]
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return out.resize(picture_size(rng), Image.BILINEAR)


# ---------------------------------------------------------------------------------------------- writing
class _Writer:
    """Collects the rows of labels.csv; links shared files, writes generated ones as PNG."""

    def __init__(self, dst: Path) -> None:
        self.images = dst / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, str]] = []

    def link(self, target: Path, item_id: str, label: str, group: str, source: str, origin: str) -> None:
        link = self.images / (item_id + target.suffix)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
        self.add(item_id, label, group, source, origin)

    def save(
        self, image: Image.Image, item_id: str, label: str, group: str, source: str, origin: str
    ) -> None:
        image.save(self.images / f"{item_id}.png")
        self.add(item_id, label, group, source, origin)

    def add(self, item_id: str, label: str, group: str, source: str, origin: str) -> None:
        self.rows.append({"id": item_id, "label": label, "group": group, "source": source, "origin": origin})

    def count(self, label: str) -> int:
        return sum(r["label"] == label for r in self.rows)


def _collections(shared: Path, out: _Writer, per_class: int, rng: random.Random) -> dict[str, set[str]]:
    """The three modalities of the shared collections (symlinks); returns the ids taken per collection."""
    taken: dict[str, set[str]] = defaultdict(set)
    for label, parts in COLLECTIONS.items():
        for (folder, table, group_of), n in zip(parts, _shares(per_class, len(parts)), strict=True):
            files = _files(shared / folder / "images")
            rows = [r for r in _rows(shared / folder / table) if r["id"] in files]
            for row in _spread(rows, n, group_of, rng):
                out.link(files[row["id"]], f"{folder}-{row['id']}", label, f"{folder}:{group_of(row)}",
                         folder, "file")  # fmt: skip
                taken[folder].add(row["id"])
    return taken


def _fundus(shared: Path, out: _Writer, per_class: int, rng: random.Random, skimage_dir: Path) -> None:
    sources = [(p, "drive", f"drive-{p.stem}") for p in sorted(_files(shared / "drive" / "images").values())]
    sources.append((skimage_dir / "retina.jpg", "skimage", "skimage-retina"))
    copies = max(0, round(FUNDUS_SHARE * per_class / len(sources)) - 1)
    for path, source, item_id in sources[:per_class]:
        group = f"{source}:{path.stem}"
        image = _bounded(_rgb(Image.open(path)), 640)
        if source == "drive":
            out.link(path, item_id, "fundus", group, source, "file")
        else:
            out.save(image, item_id, "fundus", group, source, "file")
        for k in range(copies):
            out.save(fundus_copy(image, rng), f"{item_id}-copy{k}", "fundus", group, source, "copy")


def _skimage_images(skimage_dir: Path) -> list[tuple[str, Image.Image]]:
    """scikit-image's images (first frame of the multi-page ones), those of SKIMAGE_LEFT_OUT excepted."""
    import skimage.io

    found = []
    for path in sorted(skimage_dir.iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".tif", ".gif") or path.name in SKIMAGE_LEFT_OUT:
            continue
        arr = np.asarray(skimage.io.imread(path))
        while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            arr = arr[0]
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1 else 1.0), 0, 255).astype(np.uint8)
        image = _rgb(Image.fromarray(arr))
        if max(image.size) < 128:  # the tiny multi-page test files: shown as blocks
            image = image.resize((image.width * 16, image.height * 16), Image.NEAREST)
        found.append((path.stem, _bounded(image)))
    return found


def _other(shared: Path, out: _Writer, per_class: int, rng: random.Random, skimage_dir: Path,
           taken: dict[str, set[str]]) -> None:  # fmt: skip
    n_sk, n_lfw, n_masks = (round(share * per_class) for share in OTHER_SHARES.values())
    pictures = _skimage_images(skimage_dir)
    for k, (name, image) in enumerate(pictures[:n_sk]):
        group = f"skimage:{name}"
        out.save(image, f"skimage-{name}", "other", group, "skimage", "file")
        for c in range(_shares(max(0, n_sk - len(pictures)), len(pictures))[k]):
            out.save(
                recoloured_crop(image, rng), f"skimage-{name}-copy{c}", "other", group, "skimage", "copy"
            )
    faces = np.load(skimage_dir / "lfw_subset.npy")
    for k in rng.sample(range(len(faces)), min(n_lfw, len(faces))):
        face = Image.fromarray((faces[k] * 255).astype(np.uint8)).resize((rng.randint(100, 200),) * 2,
                                                                          Image.BICUBIC)  # fmt: skip
        out.save(face.convert("RGB"), f"skimage-lfw{k:03d}", "other", f"lfw:{k}", "skimage-lfw", "file")
    masked = [c for c in MASKED if (shared / c / "masks").is_dir()] + ["drive"]
    for collection, n in zip(masked, _shares(n_masks, len(masked)), strict=True):
        masks = _files(shared / collection / "masks")
        free = sorted(m for m in masks if m not in taken[collection]) or sorted(masks)
        for stem in rng.sample(free, min(n, len(free))):
            group = f"{collection}:{stem}" if collection == "drive" else f"mask:{collection}:{stem}"
            out.link(masks[stem], f"{collection}-{stem}-mask", "other", group, "masks", "mask")
    left = max(0, per_class - out.count("other"))
    for kind, n in zip(SYNTHETIC, _shares(left, len(SYNTHETIC)), strict=True):
        for k in range(n):
            item_id = f"synthetic-{kind}-{k:03d}"
            out.save(SYNTHETIC[kind](rng, rng.random() < 0.5), item_id, "other", item_id, f"synthetic-{kind}",
                     "synthetic")  # fmt: skip


# ---------------------------------------------------------------------------------------------- split
def grouped_split(rows: list[dict[str, str]], seed: int = 0, val: float = 0.15, test: float = 0.15
                  ) -> dict[str, list[str]]:  # fmt: skip
    """Train / val / test ids: whole groups, a ``test`` and a ``val`` share of each source's images (by the
    source of a group's first image); a source of fewer than three groups stays in training."""
    rng = random.Random(seed)
    members: dict[str, list[str]] = defaultdict(list)
    source_of: dict[str, str] = {}
    for row in rows:
        members[row["group"]].append(row["id"])
        source_of.setdefault(row["group"], row["source"])
    by_source: dict[str, list[str]] = defaultdict(list)
    for group in sorted(members):
        by_source[source_of[group]].append(group)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for _source, groups in sorted(by_source.items()):
        rng.shuffle(groups)
        total = sum(len(members[g]) for g in groups)
        held = {"test": 0, "val": 0}
        for group in groups:
            side = next(
                (s for s, share in (("test", test), ("val", val)) if held[s] < share * total), "train"
            )
            side = side if len(groups) >= 3 else "train"
            held[side] = held.get(side, 0) + len(members[group])
            split[side] += members[group]
    return {side: sorted(ids) for side, ids in split.items()}


def main(shared: Path, dst: Path, per_class: int = 500, seed: int = 0) -> list[dict[str, str]]:
    """Write ``dst/images``, ``dst/labels.csv`` and ``dst/split.json``; returns the rows of labels.csv."""
    import skimage

    skimage_dir = Path(skimage.__file__).parent / "data"
    rng = random.Random(seed)
    out = _Writer(dst)
    taken = _collections(shared, out, per_class, rng)
    _fundus(shared, out, per_class, rng, skimage_dir)
    _other(shared, out, per_class, rng, skimage_dir, taken)
    with (dst / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(out.rows[0]))
        writer.writeheader()
        writer.writerows(out.rows)
    split = grouped_split(out.rows, seed)
    (dst / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    counts = Counter((r["label"], r["source"]) for r in out.rows)
    shown = ", ".join(f"{label}/{source} {n}" for (label, source), n in sorted(counts.items()))
    print(
        f"{len(out.rows)} images -> {dst} ({', '.join(f'{s} {len(v)}' for s, v in split.items())}): {shown}"
    )
    return out.rows


# ---------------------------------------------------------------------------------------------- report
def per_source(report: Path, data: Path) -> list[dict[str, object]]:
    """Accuracy per source of an evaluation's ``predictions.csv`` (its ``pred`` is the shipped rule's label),
    with the most frequent wrong call; printed as a Markdown table and returned."""
    rows = {r["id"]: r for r in _rows(data / "labels.csv")}
    by_source: dict[tuple[str, str], list[str]] = defaultdict(list)
    for p in _rows(report / "predictions.csv"):
        row = rows[p["id"]]
        by_source[(row["label"], row["source"])].append(p["pred"])
    table = []
    for (label, source), preds in sorted(by_source.items()):
        wrong = Counter(p for p in preds if p != label).most_common(1)
        table.append({"label": label, "source": source, "n": len(preds),
                      "accuracy": sum(p == label for p in preds) / len(preds),
                      "most_frequent_error": f"{wrong[0][0]} ({wrong[0][1]})" if wrong else ""})  # fmt: skip
    print("| class | source | images | accuracy | most frequent error |\n|---|---|---|---|---|")
    for t in table:
        print(
            f"| {t['label']} | {t['source']} | {t['n']} | {t['accuracy']:.3f} | {t['most_frequent_error']} |"
        )
    return table


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["per-source"]:
        per_source(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("shared", type=Path, help="the shared datasets folder")
        parser.add_argument("dst", type=Path, help="the folder to write (e.g. runs/modality)")
        parser.add_argument("--per-class", type=int, default=500, help="at most this many images a class")
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args()
        main(args.shared, args.dst, args.per_class, args.seed)
