"""Distributed training: the helpers under a real 2-process gloo group, and ``torchrun -m medlens train`` on
CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from medlens.training import distributed
from medlens.training.distributed import DistInfo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    device = torch.device("cpu")
    result = {
        "info": [info.rank, info.world_size, info.backend, info.is_main],
        "sum": distributed.all_reduce_sum([rank + 1.0, 10.0], info, device),
        "any": [distributed.any_rank(rank == 1, info, device), distributed.any_rank(False, info, device)],
        "gather": distributed.gather_tensors(torch.arange(rank + 1), info).tolist(),
        "broadcast": distributed.broadcast_object({"from": rank}, info),
    }
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    result["in_sync"] = distributed.parameters_in_sync(net, info)
    if rank == 1:
        with torch.no_grad():
            net.weight[0, 0] += 1e-3
    result["after_change"] = distributed.parameters_in_sync(net, info)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    distributed.cleanup(info)


def test_helpers_in_a_two_process_gloo_group(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, res in enumerate(results):
        assert res["info"] == [rank, 2, "gloo", rank == 0]
        assert res["sum"] == [3.0, 20.0]
        assert res["any"] == [True, False]
        assert res["gather"] == [0, 0, 1]  # rank 0 sends [0], rank 1 sends [0, 1]
        assert res["broadcast"] == {"from": 0}
        assert res["in_sync"] is True and res["after_change"] is False


def test_single_process_fallbacks() -> None:
    info, device = DistInfo(), torch.device("cpu")
    assert not info.enabled and info.is_main
    assert distributed.init_distributed("cpu") == info  # no WORLD_SIZE in the environment
    assert distributed.all_reduce_sum([1, 2], info, device) == [1.0, 2.0]
    assert distributed.any_rank(True, info, device) is True
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(net, info, device) is net and distributed.unwrap_model(net) is net
    assert distributed.parameters_in_sync(net, info)


def test_shards_partition_a_permutation() -> None:
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [distributed.shard_indices(perm, r, 3, per_rank=3) for r in range(3)]
    flat = torch.cat(shards).tolist()
    assert len(flat) == len(set(flat)) == 9 and all(len(s) == 3 for s in shards)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_epoch(synthetic_seg: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "medlens",
        "train",
        str(synthetic_seg),
        "--input-size",
        "32",
        "--encoder",
        "mobilenet_v2",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--name",
        "ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "2 processes" in log and "weights identical on all 2 ranks" in log
    run = out / "ddp"
    assert proc.stdout.strip().splitlines() == [str(run)]  # only rank 0 prints
    for rel in (
        "config.yaml",
        "plan.json",
        "split.json",
        "metrics.csv",
        "curves.png",
        "model_spec.json",
        "val_metrics.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (run / rel).is_file(), rel
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch

    from medlens.inference.bundle import load_model_source

    model, spec = load_model_source(run)
    assert spec.encoder == "mobilenet_v2"
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
