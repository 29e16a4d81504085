"""Peak memory and time of one large upload: POST /api/v1/analyze with a single-colour W x W PNG.

A one-colour PNG compresses to a few kilobytes whatever its size, so the upload limit does not stop it; what
bounds the server's memory is how the image is decoded and analysed. The script loads the app (shipped models,
no UI) in this process, warms it up with a small image, then posts the large one and reports the rise of the
process's peak resident set (``resource.getrusage(...).ru_maxrss``) and the wall time of the request.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.upload_memory --side 8000 --pipeline polyp
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_colour_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG of one colour (a few kB)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (180, 90, 80)).save(buf, format="PNG")
    return buf.getvalue()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def measure(side: int, pipeline: str, models: str) -> dict:
    from fastapi.testclient import TestClient

    from medlens.app.api import create_app

    home = tempfile.mkdtemp(prefix="medlens-bench-")
    app = create_app(models_dir=models, home=home, ui=False)
    small = np.full((256, 256, 3), (180, 90, 80), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="PNG")
    with TestClient(app) as client:
        warm = client.post(
            "/api/v1/analyze", files={"file": ("w.png", buf.getvalue())}, data={"pipeline": pipeline}
        )
        before = peak_rss_mb()
        data = one_colour_png(side)
        t0 = time.perf_counter()
        r = client.post("/api/v1/analyze", files={"file": ("big.png", data)}, data={"pipeline": pipeline})
        seconds = time.perf_counter() - t0
    return {
        "side": side, "png_kb": round(len(data) / 1024, 1), "warm_status": warm.status_code,
        "status": r.status_code, "seconds": round(seconds, 2), "peak_rss_before_mb": round(before),
        "peak_rss_after_mb": round(peak_rss_mb()), "peak_rise_mb": round(peak_rss_mb() - before),
        "image_size": r.json().get("image_size") if r.status_code == 200 else r.json(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--pipeline", default="polyp")
    parser.add_argument("--models", default="models")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.side, args.pipeline, args.models)))


if __name__ == "__main__":
    main()
