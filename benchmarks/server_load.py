"""Bounded load test of the web app on loopback: N concurrent clients POST images to /api/v1/analyze.

For each configuration (``--configs``, run one after the other in this process, in the order given):
starts the app (``medlens.app.api.create_app`` + uvicorn in a thread) on 127.0.0.1 at a free port, with
MEDLENS_HOME in a temporary folder and the skin pipeline over the bundles in ``--models`` (copied first),
random-weight stand-ins of the shipped (``--tiny``) or v2 (``--v2-standins``) architectures; waits for
``/healthz`` to say ready; sends 10 requests one after the other (first vs tenth: warm start); then
``--clients`` threads, each with its own ``httpx.Client``, post real example images until ``--seconds`` have
passed or ``--max-requests`` were sent in all (requests in flight are awaited). Reports requests/s, p50/p99
latency, errors (target 0) and whether every successful analysis was stored (``GET /api/v1/analyses`` total
== successful requests). Only 127.0.0.1 is ever contacted.

Configurations: ``before`` = main before issue #14 (torch runtime, one analysis at a time, no warm-up);
``onnx-1`` = ONNX Runtime (int8 where available), one worker, warm-up; ``after`` = the same with one worker
per core (`medlens.app.pool.serving_plan`).

    .venv/bin/python -m benchmarks.server_load --threads 1 --configs before after --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/server_load.py` as well as `python -m ...`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    bench_workdir,
    command_line,
    example_images,
    machine_info,
    machine_line,
    md_table,
    percentiles,
    synthetic_skin_images,
    update_section,
    write_json,
)
from benchmarks.pipelines import (
    SKIN_BUNDLES,
    models_label,
    prepare_int8,
    prepare_skin_models,
    skin_pipeline,
    use_int8,
)

HOST = "127.0.0.1"
#: runtime, int8 graphs, workers (None: one per core), warm-up at start
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"runtime": "torch", "int8": False, "workers": 1, "warm_up": False, "threads": 1},
    "onnx-1": {"runtime": "onnx", "int8": True, "workers": 1, "warm_up": True},
    "after": {"runtime": "onnx", "int8": True, "workers": None, "warm_up": True},
}
SEQUENTIAL = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models", help="folder with the skin-seg and skin-cls bundles")
    p.add_argument("--tiny", action="store_true", help="random-weight bundles of the shipped architectures")
    p.add_argument("--v2-standins", action="store_true", help="random-weight bundles of the v2 architectures")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["before", "after"])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=30.0, help="how long clients keep sending")
    p.add_argument("--max-requests", type=int, default=2000, help="upper bound on requests sent in all")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s)")
    p.add_argument(
        "--scope",
        choices=("auto", "shipped", "off"),
        default="auto",
        help="out-of-scope checks: as shipped, or off so every stage runs (auto: off for --tiny stand-ins, "
        "whose random outputs would trip them)",
    )
    p.add_argument(
        "--images", default=None, help="folder of example images (default: HAM10000 from ../shared)"
    )
    p.add_argument("--n-images", type=int, default=16, help="distinct example images posted in turn")
    p.add_argument("--threads", type=int, default=None, help="MEDLENS_NUM_THREADS for the models")
    p.add_argument("--ui", action="store_true", help="also mount the Gradio UI (as `medlens serve` does)")
    p.add_argument("--json", default=None, help="results file (default: benchmarks/results/<section>.json)")
    p.add_argument("--out", default=None, help="markdown file whose section is replaced/appended")
    p.add_argument("--section", default="server", help="section key in --out (one per configuration)")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one, removed)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ server
class ThreadedServer:
    """uvicorn serving ``app`` on a socket bound to 127.0.0.1 (free port) in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def build_app(args: argparse.Namespace, work: Path, models_dir: Path, name: str, int8: dict | None) -> Any:
    """The app of configuration ``name`` (see :data:`CONFIGS`) with its own history folder; its models get
    ``cores // workers`` threads (``--threads`` = the cores), ``before`` one thread as measured before."""
    from medlens.app.api import create_app
    from medlens.app.pool import serving_plan
    from medlens.inference.runtime import configure_threads, default_threads

    cfg = CONFIGS[name]
    plan = serving_plan(cfg["workers"], default_threads())  # --threads (MEDLENS_NUM_THREADS) = the cores
    saved = os.environ.get("MEDLENS_NUM_THREADS")
    os.environ["MEDLENS_NUM_THREADS"] = str(cfg.get("threads") or plan.threads)
    try:
        pipe = skin_pipeline(models_dir, cfg["runtime"], scope=args.scope_on)
        if cfg["runtime"] == "onnx" and cfg["int8"] and int8:
            use_int8(pipe, int8)
        configure_threads(cfg.get("threads") or plan.threads)  # torch's pool: the app factory leaves it alone
        app = create_app(models_dir=models_dir, home=work / f"home-{name}", pipelines={"skin": pipe},
                         ui=args.ui, workers=plan.workers, warm_up=cfg["warm_up"])  # fmt: skip
    finally:
        if saved is None:
            os.environ.pop("MEDLENS_NUM_THREADS", None)
        else:
            os.environ["MEDLENS_NUM_THREADS"] = saved
    app.state.bench = {**cfg, "workers": plan.workers, "threads": cfg.get("threads") or plan.threads}
    return app


def example_payloads(args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], str]:
    """``(file name, bytes)`` of the example images (PNG-encoded synthetic ones when there are none)."""
    import io

    from PIL import Image

    paths, desc = example_images(args.images, args.n_images)
    if paths:
        return [(p.name, p.read_bytes()) for p in paths], desc
    out = []
    for i, arr in enumerate(synthetic_skin_images(args.n_images)):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append((f"synthetic{i}.png", buf.getvalue()))
    return out, f"{len(out)} synthetic 200x150 PNG images ({desc})"


# ------------------------------------------------------------------------------------------------ clients
class Load:
    """Shared counters of the client threads; the request budget and the deadline bound the test."""

    def __init__(self, max_requests: int, seconds: float) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.max_requests = max_requests
        self.deadline = time.monotonic() + seconds
        self.latencies_ms: list[float] = []
        self.timings: list[dict[str, float]] = []
        self.errors: list[str] = []
        self.out_of_scope = 0
        self.gradcam = 0

    def take(self) -> bool:
        """One more request allowed?"""
        with self.lock:
            if self.sent >= self.max_requests or time.monotonic() >= self.deadline:
                return False
            self.sent += 1
            return True


def client(url: str, payloads: list[tuple[str, bytes]], load: Load, offset: int, timeout: float) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=timeout) as http:
        i = offset
        while load.take():
            name, data = payloads[i % len(payloads)]
            i += 1
            t0 = time.perf_counter()
            try:
                r = http.post("/api/v1/analyze", files={"file": (name, data)}, data={"pipeline": "skin"})
                ms = (time.perf_counter() - t0) * 1000.0
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                body = r.json()
            except Exception as exc:  # every failure counts as an error, the test goes on
                with load.lock:
                    load.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with load.lock:
                load.latencies_ms.append(ms)
                load.timings.append(body.get("timings") or {})
                load.out_of_scope += bool(body.get("out_of_scope"))
                load.gradcam += bool(body.get("gradcam_url"))


def server_stages(timings: list[dict[str, float]]) -> dict[str, float]:
    """Median of each ``timings`` key the API returned (decode, pipeline stages, analysis)."""
    keys = sorted({k for t in timings for k in t})
    return {k: round(float(np.median([t[k] for t in timings if k in t])), 1) for k in keys}


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until ``/healthz`` answers 200 (ready)."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as http:
        while http.get("/healthz").status_code != 200:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the app was not ready within {timeout} s")
            time.sleep(0.05)
    return round(time.perf_counter() - t0, 2)


def sequential(url: str, payloads: list[tuple[str, bytes]], timeout: float) -> list[float]:
    """Latencies (ms) of :data:`SEQUENTIAL` requests sent one after the other right after readiness."""
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=timeout) as http:
        for i in range(SEQUENTIAL):
            t0 = time.perf_counter()
            http.post("/api/v1/analyze", files={"file": payloads[i % len(payloads)]},
                      data={"pipeline": "skin"}).raise_for_status()  # fmt: skip
            out.append(round((time.perf_counter() - t0) * 1000.0, 1))
    return out


def run_load(url: str, payloads: list[tuple[str, bytes]], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=url, timeout=args.timeout) as http:
        before = http.get("/api/v1/analyses", params={"page_size": 1}).json()["total"]
    load = Load(args.max_requests, args.seconds)
    threads = [
        threading.Thread(target=client, args=(url, payloads, load, k, args.timeout), daemon=True)
        for k in range(args.clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with httpx.Client(base_url=url, timeout=args.timeout) as http:
        after = http.get("/api/v1/analyses", params={"page_size": 1}).json()["total"]
    ok = len(load.latencies_ms)
    stored = after - before
    return {
        "requests_sent": load.sent,
        "successful": ok,
        "errors": len(load.errors),
        "error_examples": sorted(set(load.errors))[:5],
        "wall_s": round(wall, 2),
        "requests_per_s": round(ok / wall, 3) if wall else None,
        "latency_ms": percentiles(load.latencies_ms),
        "server_timings_ms_p50": server_stages(load.timings),
        "stored": stored,
        "all_stored": stored == ok,
        "out_of_scope": load.out_of_scope,
        "with_gradcam": load.gradcam,
    }


def run_config(args: argparse.Namespace, work: Path, models_dir: Path, name: str, payloads, int8) -> dict:
    """Start configuration ``name``, time readiness and the first requests, then the load."""
    t0 = time.perf_counter()
    app = build_app(args, work, models_dir, name, int8)
    built = round(time.perf_counter() - t0, 2)
    with ThreadedServer(app) as server:
        ready = wait_ready(server.url, args.timeout)
        first = sequential(server.url, payloads, args.timeout)
        result = run_load(server.url, payloads, args)
    return {"config": app.state.bench, "load_s": built, "ready_s": ready, "first_requests_ms": first,
            **result}  # fmt: skip


# ------------------------------------------------------------------------------------------------ report
def _describe(cfg: dict[str, Any]) -> str:
    precision = "int8" if cfg["runtime"] == "onnx" and cfg["int8"] else "fp32"
    return (f"{cfg['runtime']} {precision}, {cfg['workers']} worker(s) x {cfg['threads']} thread(s), "
            f"warm-up {'on' if cfg['warm_up'] else 'off'}")  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    rows, seq_rows, notes = [], [], []
    for name, r in res["results"].items():
        lat, first = r["latency_ms"], r["first_requests_ms"]
        rows.append([name, _describe(r["config"]), r["successful"], r["errors"], r["wall_s"],
                     r["requests_per_s"], lat["p50"], lat["p99"], r["server_timings_ms_p50"].get("total"),
                     r["stored"], "yes" if r["all_stored"] else "NO"])  # fmt: skip
        seq_rows.append([name, r["load_s"], r["ready_s"], first[0], first[-1], float(np.median(first[1:])),
                         round(first[0] / first[-1], 2)])  # fmt: skip
        notes.append(f"- {name}: out of scope {r['out_of_scope']}, with Grad-CAM {r['with_gradcam']}"
                     + (f"; errors: {'; '.join(r['error_examples'])}" if r["errors"] else "")
                     + "; server-side `timings` (medians, ms; `wait` = waiting for a free pipeline replica): "
                     + ", ".join(f"{k} {v}" for k, v in r["server_timings_ms_p50"].items()))  # fmt: skip
    names = list(res["results"])
    ratios = ""
    if len(names) > 1:
        a, b = res["results"][names[0]], res["results"][names[-1]]
        ratios = (f"{names[-1]} vs {names[0]}: requests/s x{b['requests_per_s'] / a['requests_per_s']:.2f}, "
                  f"p50 x{a['latency_ms']['p50'] / b['latency_ms']['p50']:.2f} faster, "
                  f"p99 x{a['latency_ms']['p99'] / b['latency_ms']['p99']:.2f} faster.")  # fmt: skip
    lines = [
        f"## Server load: POST /api/v1/analyze on loopback, before and after issue #14 "
        f"({models_label(res['models'])})",
        "",
        "What: the app (`create_app` + uvicorn in a thread, 127.0.0.1, MEDLENS_HOME in a temporary folder, "
        f"{'with' if s['ui'] else 'without'} the Gradio UI mounted) with the skin pipeline (out-of-scope "
        f"checks {res['scope_checks']}), one configuration after the other in one process (in the order of "
        f"the table). Per configuration: time to `/healthz` ready, {SEQUENTIAL} requests one after the other "
        f"(first vs tenth), then {s['clients']} concurrent clients (httpx) post example images for "
        f"{s['seconds']:g} s (at most {s['max_requests']} requests; those in flight at the deadline are "
        "awaited). `before` = main before issue #14 (torch, per-pipeline lock, no warm-up, 1 model thread as "
        "measured then); `after` = ONNX Runtime int8 graphs, a pool of one replica per core with "
        "cores // workers threads each, warm-up before ready.",
        "",
        f"- Command: `{res['command']}`",
        f"- Machine: {machine_line(res['machine'])}; load average (1 min) before/after: "
        f"{res['load_before']} / {res['load_after']}",
        f"- Models: {res['models']}",
        f"- Images: {res['images']}",
        "",
        md_table(
            [
                "config",
                "serving",
                "requests ok",
                "errors",
                "wall s",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "pipeline p50 ms (server)",
                "stored",
                "all stored",
            ],
            rows,
        ),
        "",
        ratios,
        "",
        f"Start-up and the first {SEQUENTIAL} requests one at a time (load = building pipelines and app):",
        "",
        md_table(
            [
                "config",
                "load s",
                "until ready s",
                "1st request ms",
                f"{SEQUENTIAL}th request ms",
                "median 2nd-10th ms",
                "1st / 10th",
            ],
            seq_rows,
        ),
        "",
        *notes,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with bench_workdir("medlens-load-", args.work_dir, args.threads) as (work, load_before):
        models_dir, models_desc = prepare_skin_models(args.models, work, args.tiny, args.v2_standins)
        random_weights = "random-weight" in models_desc.lower()
        args.scope_on = {"auto": not random_weights, "shipped": True, "off": False}[args.scope]
        payloads, images_desc = example_payloads(args)
        int8 = None
        if any(CONFIGS[c]["int8"] for c in args.configs):
            from benchmarks.common import load_images

            paths, _ = example_images(args.images, 8)
            images = load_images(paths) if paths else synthetic_skin_images(8)
            int8 = prepare_int8(models_dir, dict.fromkeys(SKIN_BUNDLES, images))
        results = {name: run_config(args, work, models_dir, name, payloads, int8) for name in args.configs}
        res: dict[str, Any] = {
            "benchmark": "server_load",
            "command": command_line("benchmarks.server_load", argv),
            "machine": machine_info(),
            "settings": {
                "clients": args.clients,
                "seconds": args.seconds,
                "max_requests": args.max_requests,
                "ui": args.ui,
                "configs": args.configs,
            },
            "models": models_desc,
            "scope_checks": "as shipped" if args.scope_on else "off (every stage runs)",
            "int8": int8,
            "images": images_desc,
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
            "results": results,
        }
    md = markdown(res)
    print(md)
    print(f"JSON: {write_json(args.json or RESULTS / f'{args.section}.json', res)}")
    if args.out:
        print(f"section {args.section!r} written to {update_section(args.out, args.section, md)}")
    return res


if __name__ == "__main__":
    main()
