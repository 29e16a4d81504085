"""Synthetic pictures that are no medical image, for the ``other`` class of the modality classifier
(``modality.py`` beside this file): uniform, noise, gradients, text screenshots, shapes, CT-like phantoms,
stripes and grids. Each generator takes a seeded ``random.Random`` and whether to draw in grey, and returns an
RGB ``PIL.Image`` of 128 to 512 pixels a side."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "patient", "report", "image", "scan", "result", "analysis", "model", "data", "file", "view",
    "open", "save", "export", "settings", "help", "window", "table", "value", "mean", "error",
    "loading", "upload", "version", "total", "page", "figure", "section", "method",
)  # fmt: skip


def picture_size(rng: random.Random, low: int = 128, high: int = 512) -> tuple[int, int]:
    """A random ``(width, height)``, each side from ``low`` to ``high`` pixels."""
    return rng.randint(low, high), rng.randint(low, high)


def _colour(rng: random.Random, grey: bool) -> tuple[int, int, int]:
    if grey:
        v = rng.randint(0, 255)
        return v, v, v
    return rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)


def _uniform(rng: random.Random, grey: bool) -> Image.Image:
    return Image.new("RGB", picture_size(rng), _colour(rng, grey))


def _noise(rng: random.Random, grey: bool) -> Image.Image:
    w, h = picture_size(rng)
    gen = np.random.default_rng(rng.randrange(2**32))
    shape = (h, w, 1 if grey else 3)
    kind = rng.choice(("gauss", "uniform", "salt", "smooth"))
    if kind == "gauss":
        arr = gen.normal(rng.uniform(60, 200), rng.uniform(10, 80), shape)
    elif kind == "uniform":
        arr = gen.uniform(0, 255, shape)
    elif kind == "salt":
        arr = np.where(gen.random(shape) < rng.uniform(0.05, 0.5), 255.0, 0.0)
    else:
        small = gen.uniform(0, 255, (max(2, h // 16), max(2, w // 16), shape[2])).astype(np.uint8)
        arr = np.asarray(Image.fromarray(small.squeeze(-1) if grey else small).resize((w, h), Image.BICUBIC),
                         np.float32).reshape(shape)  # fmt: skip
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if grey else arr).convert("RGB")


def _gradient(rng: random.Random, grey: bool) -> Image.Image:
    w, h = picture_size(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
    else:
        t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c0, c1 = np.array(_colour(rng, grey), np.float32), np.array(_colour(rng, grey), np.float32)
    return Image.fromarray((c0 + t[..., None] * (c1 - c0)).astype(np.uint8))


def _text(rng: random.Random, grey: bool) -> Image.Image:
    """A screenshot-like page: a title bar, lines of words, sometimes buttons."""
    w, h = picture_size(rng, 200, 512)
    dark = rng.random() < 0.3
    bg, fg = ((30, 30, 30), (220, 220, 220)) if dark else ((250, 250, 250), (20, 20, 20))
    image = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(image)
    bar = rng.randint(16, 32)
    draw.rectangle((0, 0, w, bar), fill=_colour(rng, grey))
    size = rng.randint(10, 22)
    font = ImageFont.load_default(size=size)
    y = bar + 6
    while y < h - size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
        draw.text((rng.randint(4, 30), y), line, fill=fg, font=font)
        y += int(size * rng.uniform(1.3, 2.0))
    for _ in range(rng.randint(0, 3)):
        x, y = rng.randint(0, w - 60), rng.randint(bar, h - 24)
        draw.rounded_rectangle((x, y, x + 60, y + 22), 4, fill=_colour(rng, grey), outline=fg)
    return image


def _shapes(rng: random.Random, grey: bool) -> Image.Image:
    w, h = picture_size(rng)
    image = Image.new("RGB", (w, h), _colour(rng, grey))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 12)):
        box = sorted((rng.randint(0, w), rng.randint(0, w))), sorted((rng.randint(0, h), rng.randint(0, h)))
        xy = (box[0][0], box[1][0], box[0][1], box[1][1])
        kind = rng.choice(("rect", "ellipse", "line"))
        if kind == "rect":
            draw.rectangle(xy, fill=_colour(rng, grey))
        elif kind == "ellipse":
            draw.ellipse(xy, fill=_colour(rng, grey))
        else:
            draw.line(xy, fill=_colour(rng, grey), width=rng.randint(1, 8))
    return image


def _phantom(rng: random.Random, grey: bool) -> Image.Image:
    """A CT-like slice: the Shepp-Logan phantom, or a body outline with dark lungs and a bright spine, turned
    and scaled, with noise; grey (``grey`` is not used: CT is shown grey)."""
    from skimage.data import shepp_logan_phantom

    n = 400
    if rng.random() < 0.5:
        arr = shepp_logan_phantom().astype(np.float32)
    else:
        yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j].astype(np.float32)
        arr = np.zeros((n, n), np.float32)
        ax, ay = rng.uniform(0.75, 0.95), rng.uniform(0.5, 0.75)
        arr[(xx / ax) ** 2 + (yy / ay) ** 2 < 1] = rng.uniform(0.4, 0.6)
        for side in (-1, 1):
            cx, rx, ry = side * rng.uniform(0.3, 0.45), rng.uniform(0.2, 0.3), rng.uniform(0.3, 0.5)
            arr[((xx - cx) / rx) ** 2 + ((yy + 0.05) / ry) ** 2 < 1] = rng.uniform(0.0, 0.1)
        arr[(xx**2 + (yy - ay + 0.15) ** 2) < rng.uniform(0.005, 0.01)] = 1.0
    gen = np.random.default_rng(rng.randrange(2**32))
    arr = arr + gen.normal(0, rng.uniform(0.0, 0.05), arr.shape)
    image = Image.fromarray(np.clip(arr * 255, 0, 255).astype(np.uint8))
    image = image.rotate(rng.uniform(-30, 30), resample=Image.BILINEAR)
    side = rng.randint(128, 512)
    return image.resize((side, side), Image.BILINEAR).convert("RGB")


def _pattern(rng: random.Random, grey: bool) -> Image.Image:
    w, h = picture_size(rng)
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.randint(4, 64)
    kind = rng.choice(("stripes", "checker", "grid"))
    if kind == "stripes":
        on = ((xx if rng.random() < 0.5 else yy) // period) % 2 == 0
    elif kind == "checker":
        on = ((xx // period) + (yy // period)) % 2 == 0
    else:
        on = (xx % period < 2) | (yy % period < 2)
    c0, c1 = np.array(_colour(rng, grey), np.uint8), np.array(_colour(rng, grey), np.uint8)
    return Image.fromarray(np.where(on[..., None], c0, c1).astype(np.uint8))


SYNTHETIC: dict[str, Callable[[random.Random, bool], Image.Image]] = {
    "uniform": _uniform, "noise": _noise, "gradient": _gradient, "text": _text, "shapes": _shapes,
    "phantom": _phantom, "pattern": _pattern,
}  # fmt: skip
