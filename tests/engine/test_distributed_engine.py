"""The engine under torchrun (2 CPU processes, gloo): per-rank data, rank-0 writes, exact resume; bad input;
gradient accumulation; the compile fallback."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, save_npz, spawn_with_deadline, tiny_run_config

from selfsup.config import ConfigError
from selfsup.engine import distributed as D
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.compile import SafeCompiled
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.trainer import pretrain


def _cfg(data: Path, **train):
    return tiny_run_config("simclr", {"proj_hidden_dim": 32, "proj_dim": 16}, data=data, **{"seed": 0, **train})


@pytest.fixture(scope="module")
def blobs_npz(tmp_path_factory) -> Path:
    return save_npz(make_blobs(n=16, size=16), tmp_path_factory.mktemp("data") / "blobs.npz")


def _torchrun_worker(rank: int, ports: list[int], data: str, out: str) -> None:
    """What torchrun does for each rank: environment variables, then the ordinary entry point.

    torchrun starts one run per process; this worker starts several, each on a fresh port (re-using one
    rendezvous port right after a process group is destroyed can race).
    """
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    data_p, out_p = Path(data), Path(out)
    port = iter(ports)

    def run(cfg, name, **kw):
        os.environ["MASTER_PORT"] = str(next(port))
        return pretrain(cfg, out_p / name, quiet=True, **kw)

    run(_cfg(data_p), "straight")  # 2 epochs x 2 steps
    run(_cfg(data_p, max_steps=3, checkpoint_every=1), "resumed")
    run(_cfg(data_p), "resumed", resume=True)  # every rank resumes from the one checkpoint rank 0 wrote
    # distributed feature extraction (the process group is started by hand here, as pretrain shut its own)
    from datetime import timedelta

    import torch.distributed as dist

    from selfsup.backbones import build_backbone
    from selfsup.evaluation.features_dist import extract_features_distributed

    os.environ["MASTER_PORT"] = str(next(port))
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    ds = make_blobs(n=15, size=16)  # 15 images: unequal shards
    got = extract_features_distributed(bb, ds.train, ds.mean, ds.std, torch.device("cpu"), batch_size=4)
    if rank == 0:
        torch.save(got, out_p / "features.pt")
    else:
        assert got is None
    dist.destroy_process_group()
    try:
        run(_cfg(data_p, batch_size=7), "bad")
    except ConfigError as e:
        (out_p / f"error{rank}.txt").write_text(str(e))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def torchrun_runs(blobs_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    spawn_with_deadline(_torchrun_worker, (_free_ports(5), str(blobs_npz), str(out)))
    return out


def test_torchrun_writes_one_run_from_rank_0(torchrun_runs):
    run = torchrun_runs / "straight"
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 4
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]  # one writer, no duplicates
    ckpt = load_checkpoint(list_checkpoints(run)[0])
    states = ckpt["rng"]["aug_ranks"]  # each rank's augmentation stream, seeded seed + 1 + rank
    assert len(states) == 2 and not torch.equal(states[0], states[1])


def test_torchrun_resume_is_exact(torchrun_runs):
    a = load_checkpoint(list_checkpoints(torchrun_runs / "straight")[0])["method"]
    b = load_checkpoint(list_checkpoints(torchrun_runs / "resumed")[0])["method"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_torchrun_batch_not_divisible_is_a_one_line_error_on_every_rank(torchrun_runs):
    for r in (0, 1):
        msg = (torchrun_runs / f"error{r}.txt").read_text()
        assert "train.batch_size (7) must be divisible by world size" in msg and "\n" not in msg


def test_distributed_features_equal_single_process(torchrun_runs):
    from selfsup.backbones import build_backbone
    from selfsup.evaluation.features import extract_features

    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    ds = make_blobs(n=15, size=16)
    f1, y1 = extract_features(bb, ds.train, ds.mean, ds.std, torch.device("cpu"), batch_size=4)
    f2, y2 = torch.load(torchrun_runs / "features.pt", weights_only=False)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(f2, f1, rtol=1e-5, atol=1e-6)


def test_check_batch_errors():
    two = D.DistContext(rank=0, world=2)
    assert D.check_batch(8, two, 1, has_bn=True) == 4
    assert D.check_batch(8, two, 2, has_bn=True) == 2
    with pytest.raises(ConfigError, match=r"divisible by world size x train.grad_accum_steps \(2 x 1 = 2\)"):
        D.check_batch(9, two, 1, has_bn=False)
    with pytest.raises(ConfigError, match="leaves 1 image per forward pass: BatchNorm needs at least 2"):
        D.check_batch(2, two, 1, has_bn=True)
    assert D.check_batch(2, two, 1, has_bn=False) == 1
    with pytest.raises(ConfigError, match="train.grad_accum_steps must be >= 1"):
        D.check_batch(8, two, 0, has_bn=True)


def test_grad_accumulation_runs_and_checks_the_batch(blobs_npz, tmp_path):
    res = pretrain(_cfg(blobs_npz, grad_accum_steps=2, max_steps=2), tmp_path / "acc", quiet=True)
    assert res.steps == 2 and np.isfinite(res.final_loss)
    with pytest.raises(ConfigError, match="divisible by world size x train.grad_accum_steps"):
        pretrain(_cfg(blobs_npz, grad_accum_steps=3), tmp_path / "bad", quiet=True)


def test_compile_failing_at_first_call_falls_back_to_eager(monkeypatch):
    def broken_compile(module, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler\nlong traceback")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    logged: list[str] = []
    m = torch.nn.Linear(3, 2)
    f = SafeCompiled(m, log=logged.append)
    x = torch.randn(4, 3)
    assert torch.equal(f(x), m(x)) and torch.equal(f(x), m(x))
    assert logged == ["torch.compile failed (RuntimeError: no C++ compiler); running eager"]


def test_compile_failing_at_wrap_time_falls_back(monkeypatch):
    def broken(module, **kw):
        raise RuntimeError("unsupported platform")

    monkeypatch.setattr(torch, "compile", broken)
    logged: list[str] = []
    f = SafeCompiled(torch.nn.Identity(), log=logged.append)
    assert f(torch.ones(2)).sum() == 2 and len(logged) == 1 and "unsupported platform" in logged[0]


def test_rank_slices_make_up_the_single_process_batches():
    split = make_blobs(n=20, size=16).train
    single = [idx for _, idx, _ in split.batches(8, shuffle=True, generator=torch.Generator().manual_seed(3),
                                                 drop_last=True, start_batch=1)]
    per_rank = [[idx for _, idx, _ in D.rank_batches(split, 8, D.DistContext(r, 2),
                                                     generator=torch.Generator().manual_seed(3), start_batch=1)]
                for r in (0, 1)]
    assert len(single) == 1 and all(len(p) == 1 for p in per_rank)
    for k, idx in enumerate(single):
        assert torch.equal(torch.cat([per_rank[0][k], per_rank[1][k]]), idx)


def test_pretrain_with_a_compile_failing_at_first_call_logs_one_line_and_trains(blobs_npz, tmp_path, monkeypatch,
                                                                               capsys):
    def broken_compile(module, **kw):
        def run(*a, **k):
            raise RuntimeError("backend exploded")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    res = pretrain(_cfg(blobs_npz, compile=True, max_steps=2), tmp_path / "c", quiet=True)
    assert res.steps == 2 and np.isfinite(res.final_loss)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (RuntimeError: backend exploded); running eager") == 1
