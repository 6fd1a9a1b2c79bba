"""FSDP2 (``train.fsdp``) and activation checkpointing in the engine (engine/fsdp.py), on CPU with gloo.

- 2 processes sharded == 1 process unsharded: a few engine steps (``train_step``) of SimCLR and of BYOL (an EMA
  teacher, LARS) on a tiny ViT, each rank taking its half of fixed global batches with deterministic views (as in
  tests/contract/test_distributed.py), give the same weights, buffers and optimizer state as one process with
  the whole batches. Tolerance as there: the update's relative error < 1e-3 and every entry within
  rtol 1e-3 / atol 1e-5 (three steps instead of one, LARS norms summed over shards: float order differs).
  SimCLR again with activation checkpointing inside the FSDP units: the same weights.
- The checkpoint format: the full state FSDP gathers has the keys, shapes and integer optimizer ids of the
  unsharded ``state_dict()``s and loads into a plain one-process model that then trains on identically.
- The real entry point under a torchrun-like environment (2 processes): a run with ``train.fsdp=true`` equals
  the same run without it; a run resumes across the switch (2 steps without FSDP, 2 with it == 4 without); an
  FSDP checkpoint resumes in one plain process; ``selfsup export`` reads it.
- One process: ``train.fsdp`` is a logged no-op; activation checkpointing trains the same weights; bad options
  are one-line errors.
"""
from __future__ import annotations

import json
import math
import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, save_npz, spawn_with_deadline, tiny_run_config

from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext
from selfsup.components.sync_bn import convert_sync_bn
from selfsup.config import ConfigError, OptimConfig, build_run_config
from selfsup.engine import fsdp as L
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.distributed import DistContext, mean_over_ranks
from selfsup.engine.export import export_backbone
from selfsup.engine.optim import build_optimizer
from selfsup.engine.resume import check_resume_config
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.state import TrainState
from selfsup.engine.step import Stepper, train_step
from selfsup.engine.trainer import pretrain
from selfsup.errors import CheckpointError
from selfsup.methods.base import build_method

CPU = torch.device("cpu")
WORLD = 2
B = 8  # global batch
STEPS = 3
LR, WD, CLIP = 0.5, 1e-4, 0.1  # the clip is small so that clipping acts (on the sharded norm under FSDP)
# method → (its options, its optimizer): SimCLR (gathered negatives, SGD) and BYOL (EMA teacher, LARS)
METHODS = {"simclr": ({"proj_hidden_dim": 32, "proj_dim": 16}, "sgd"),
           "byol": ({"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64}, "lars")}
# the sharded runs of the 2-process pool: each method, and SimCLR with activation checkpointing too ("+ac": the
# blocks recompute inside their FSDP units; compared with the plain one-process run, without checkpointing)
RUNS = [*METHODS, "simclr+ac"]


# ---------------------------------------------------------------------------------- steps on fixed batches
def _model(name: str, world: int = 1, sharded: bool = False, checkpointed: bool = False):
    """The method on the tiny ViT (seed 0, synced BatchNorm in its heads) and its optimizer; with activation
    checkpointing and sharded over ``world`` ranks when asked (the process group must be running)."""
    opts, optim = METHODS[name]
    torch.manual_seed(0)
    backbone = build_backbone("vit-test", in_channels=3, width=0.25, image_size=16)
    method = build_method(name, backbone, opts, num_train=B * (STEPS + 1))
    convert_sync_bn(method, CPU)
    if checkpointed:
        L.set_activation_checkpointing(method, "vit-test")
    if sharded:
        L.shard_method(method, CPU, world)
    o = L.optim_section(OptimConfig(name=optim), method)
    return method, build_optimizer(method, o, LR, WD, CPU)


def _views(x: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """Two views that depend on each image alone: a rank's views are its rows of the global batch's views."""
    v = x.float() / 127.5 - 1.0
    return [v, v.flip(-1)]


def _run(method, optimizer, rank: int, world: int, steps: range) -> tuple[Stepper, float]:
    """Engine steps over fixed global batches of B images (batch k: images k·B … (k+1)·B), this rank taking its
    B/world rows; returns the stepper and the loss averaged over the steps and the ranks."""
    images = make_blobs(n=B * (STEPS + 1), size=16).train.images
    dctx = DistContext(rank, world)
    s = Stepper(method, method, optimizer, _views, CPU, dctx, micro=B // world, grad_clip=CLIP)  # views: a function
    state = TrainState(CPU, torch.Generator().manual_seed(1), total_steps=10)
    method.train()
    b = B // world
    for step in steps:
        rows = slice(step * B + rank * b, step * B + (rank + 1) * b)
        ctx = StepContext(step=step, total_steps=10, epoch=0, steps_per_epoch=STEPS + 1)
        torch.manual_seed(100 + step)  # the global RNG agrees on every rank, as the engine keeps it
        train_step(s, state, images[rows], torch.arange(B * (STEPS + 1))[rows], ctx, LR)
        state.step += 1
    return s, float(mean_over_ranks(state.loss_sum, dctx)) / len(steps)


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    results: dict = {}
    for key in RUNS:
        name, checkpointed = key.removesuffix("+ac"), key.endswith("+ac")
        try:
            method, optimizer = _model(name, WORLD, sharded=True, checkpointed=checkpointed)
            s, loss = _run(method, optimizer, rank, WORLD, range(STEPS))
            weights, optim = L.full_state_dicts(method, optimizer)
            shards = (sum(p.to_local().numel() for p in s.params), sum(p.numel() for p in s.params))
            teacher = getattr(method, "target", None)  # BYOL's EMA target
            teacher_sharded = teacher is None or all(isinstance(p, DTensor) for p in teacher.parameters())
            results[key] = {"loss": loss, "weights": weights, "optim": optim, "shards": shards,
                            "sharded": s.sharded, "teacher_sharded": teacher_sharded}
        except Exception:  # recorded; the test of this run reports it
            results[key] = traceback.format_exc()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every sharded 2-process run of RUNS, computed once: [rank 0's, rank 1's] {key: dict or traceback}."""
    out = tmp_path_factory.mktemp("fsdp")
    spawn_with_deadline(_worker, (_free_ports(1)[0], str(out)), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _result(two_ranks, name: str) -> dict:
    r0, r1 = two_ranks[0][name], two_ranks[1][name]
    assert not isinstance(r0, str), r0
    assert not isinstance(r1, str), r1
    assert r1["weights"] == {} and r1["optim"] == {}  # the full state goes to rank 0 only
    return r0


def _flat_delta(after: dict, before: dict) -> torch.Tensor:
    keys = sorted(k for k, v in before.items() if v.is_floating_point())
    return torch.cat([(after[k].float() - before[k].float()).flatten() for k in keys])


@pytest.mark.parametrize("key", RUNS)
def test_fsdp_on_two_processes_equals_one_process(key, two_ranks):
    r, name = _result(two_ranks, key), key.removesuffix("+ac")
    local, full = r["shards"]
    assert r["sharded"] and 0 < local < full  # really sharded: rank 0 holds part of the parameters
    assert r["teacher_sharded"]  # BYOL's EMA target: sharded like its student
    torch.set_num_threads(1)
    ref, loss1 = _run(*_model(name), 0, 1, range(STEPS))  # one process, no FSDP, no checkpointing
    assert not ref.sharded
    state1, weights = ref.method.state_dict(), r["weights"]
    assert r["loss"] == pytest.approx(loss1, rel=1e-4, abs=1e-5)
    assert weights.keys() == state1.keys()  # the keys of the unsharded state_dict
    before = _model(name)[0].state_dict()
    d1, d2 = _flat_delta(state1, before), _flat_delta(weights, before)
    assert d1.norm() > 0
    err = (d2 - d1).norm() / d1.norm()
    assert err < 1e-3, f"{name}: the sharded update differs from one process by {err:.2e} (relative)"
    for k, v in state1.items():
        assert weights[k].shape == v.shape and weights[k].dtype == v.dtype, k
        torch.testing.assert_close(weights[k], v, rtol=1e-3, atol=1e-5, msg=f"{name}: {k} differs")


@pytest.mark.parametrize("name", list(METHODS))
def test_the_fsdp_optimizer_state_has_the_plain_layout(name, two_ranks):
    optim = _result(two_ranks, name)["optim"]
    torch.set_num_threads(1)
    ref, _ = _run(*_model(name), 0, 1, range(STEPS))
    plain = ref.optimizer.state_dict()
    assert [g["params"] for g in optim["param_groups"]] == [g["params"] for g in plain["param_groups"]]
    def hyper(groups: list[dict]) -> list[dict]:
        return [{k: v for k, v in g.items() if k != "params"} for g in groups]

    assert hyper(optim["param_groups"]) == hyper(plain["param_groups"])
    assert sorted(optim["state"]) == sorted(plain["state"])
    for i, entry in plain["state"].items():
        assert optim["state"][i].keys() == entry.keys()
        for k, v in entry.items():
            torch.testing.assert_close(torch.as_tensor(optim["state"][i][k]), torch.as_tensor(v), rtol=1e-3,
                                       atol=1e-5, msg=f"{name}: optimizer state {i}.{k} differs")


@pytest.mark.parametrize("name", list(METHODS))
def test_a_state_gathered_under_fsdp_loads_in_one_plain_process_and_trains_on_the_same(name, two_ranks):
    r = _result(two_ranks, name)
    torch.set_num_threads(1)
    method, optimizer = _model(name)
    L.load_full_state(method, optimizer, r["weights"], r["optim"], "fsdp-state")  # the plain path
    ref, ref_opt = _model(name)
    _run(ref, ref_opt, 0, 1, range(STEPS))
    _run(method, optimizer, 0, 1, range(STEPS, STEPS + 1))  # one more step from each
    _run(ref, ref_opt, 0, 1, range(STEPS, STEPS + 1))
    got = method.state_dict()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-3, atol=1e-5, msg=f"{name}: {k} differs after the step")


# ---------------------------------------------------------------------------------- the engine, torchrun-like
def _cfg(data: Path, **train):
    return build_run_config({
        "method": {"name": "simclr", "proj_hidden_dim": 32, "proj_dim": 16},
        "backbone": {"name": "vit-test"}, "data": {"path": str(data)},
        "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "log_every": 1, "seed": 0, **train},
        "optim": {"warmup_epochs": 0.5}})


@pytest.fixture(scope="module")
def fsdp_npz(tmp_path_factory) -> Path:
    return save_npz(make_blobs(n=16, size=16), tmp_path_factory.mktemp("data") / "blobs.npz")  # 2 steps an epoch


def _torchrun_worker(rank: int, ports: list[int], data: str, out: str) -> None:
    """What torchrun does for each rank (environment variables, then the ordinary entry point), once per run,
    each on a fresh port (as in tests/engine/test_distributed_engine.py)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    data_p, out_p = Path(data), Path(out)
    port = iter(ports)

    def run(cfg, name, **kw):
        os.environ["MASTER_PORT"] = str(next(port))
        return pretrain(cfg, out_p / name, quiet=True, **kw)

    run(_cfg(data_p), "plain")  # 2 epochs x 2 steps
    run(_cfg(data_p, fsdp=True), "fsdp")
    run(_cfg(data_p, max_steps=2), "mixed")  # 2 steps without FSDP ...
    run(_cfg(data_p, fsdp=True), "mixed", resume=True)  # ... and 2 with it, from the plain checkpoint
    run(_cfg(data_p, fsdp=True, max_steps=2), "half")  # an FSDP checkpoint, resumed by one process below


@pytest.fixture(scope="module")
def torchrun_runs(fsdp_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    spawn_with_deadline(_torchrun_worker, (_free_ports(5), str(fsdp_npz), str(out)))
    return out


def _final(run: Path) -> dict:
    return load_checkpoint(list_checkpoints(run)[0])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["method"].keys() == b["method"].keys()
    for k, v in b["method"].items():
        torch.testing.assert_close(a["method"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    oa, ob = a["optimizer"], b["optimizer"]
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]
    assert sorted(oa["state"]) == sorted(ob["state"])
    for i in ob["state"]:
        for k, v in ob["state"][i].items():
            torch.testing.assert_close(torch.as_tensor(oa["state"][i][k]), torch.as_tensor(v), rtol=1e-4, atol=1e-6)


def test_an_fsdp_run_equals_the_same_run_without_it(torchrun_runs):
    info = json.loads((torchrun_runs / "fsdp" / "run.json").read_text())
    assert info["fsdp"] is True and info["world_size"] == 2 and info["steps"] == 4
    assert json.loads((torchrun_runs / "plain" / "run.json").read_text())["fsdp"] is False
    _assert_same_run(_final(torchrun_runs / "fsdp"), _final(torchrun_runs / "plain"))
    assert _losses(torchrun_runs / "fsdp") == pytest.approx(_losses(torchrun_runs / "plain"), rel=1e-5, abs=1e-6)


def test_a_run_resumes_from_a_plain_checkpoint_under_fsdp(torchrun_runs):
    run = torchrun_runs / "mixed"
    line = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 2 and line["changed"]["train.fsdp"] == [False, True]
    _assert_same_run(_final(run), _final(torchrun_runs / "plain"))


def test_an_fsdp_checkpoint_resumes_in_one_plain_process(torchrun_runs, fsdp_npz):
    run = torchrun_runs / "half"
    ckpt = _final(run)
    assert ckpt["step"] == 2 and ckpt["method"].keys() == _final(torchrun_runs / "plain")["method"].keys()
    assert all(isinstance(i, int) for i in ckpt["optimizer"]["state"])  # optimizer.state_dict()'s layout
    res = pretrain(_cfg(fsdp_npz), run, resume=True, quiet=True)  # one process, train.fsdp off
    assert res.steps == 4 and math.isfinite(res.final_loss)
    line = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert line["changed"]["train.fsdp"] == [True, False]


def test_export_reads_an_fsdp_run_like_any_other(torchrun_runs, tmp_path):
    from safetensors.torch import load_file

    a = load_file(str(export_backbone(torchrun_runs / "fsdp", "safetensors", tmp_path / "fsdp.safetensors")))
    b = load_file(str(export_backbone(torchrun_runs / "plain", "safetensors", tmp_path / "plain.safetensors")))
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------------- one process, bad options
def test_the_sharded_gradient_norm_and_clip_match_torch_on_whole_tensors():
    """One process (no all-reduce): the same norm and the same clipped gradients as clip_grad_norm_."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    total = L.sharded_grad_norm(a, 0.5)
    torch.testing.assert_close(total, torch.nn.utils.clip_grad_norm_(b, 0.5))
    assert float(total) > 0.5  # the clip acted
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)


def test_optimizer_state_by_name_and_back_is_optimizer_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(model, OptimConfig(name="sgd"), 0.1, 1e-4, CPU)  # two groups: weights, norms/biases
    model(torch.randn(6, 3)).square().sum().backward()
    opt.step()
    plain = opt.state_dict()
    named = L._keyed_by_name(plain, model, opt, "ckpt.pt")
    assert set(named["state"]) == {n for n, _ in model.named_parameters()}
    assert L._keyed_by_id(named) == plain
    bad = {**plain, "param_groups": plain["param_groups"][:1]}
    with pytest.raises(CheckpointError, match="ckpt.pt: its optimizer state does not fit"):
        L._keyed_by_name(bad, model, opt, "ckpt.pt")


def test_fsdp_in_one_process_is_a_noted_no_op(fsdp_npz, tmp_path, capsys):
    a = pretrain(_cfg(fsdp_npz, fsdp=True, max_steps=2), tmp_path / "a")
    assert "train.fsdp: one process, nothing to shard" in capsys.readouterr().err
    pretrain(_cfg(fsdp_npz, max_steps=2), tmp_path / "b", quiet=True)
    assert a.steps == 2 and json.loads((tmp_path / "a" / "run.json").read_text())["fsdp"] is False
    wa, wb = _final(tmp_path / "a")["method"], _final(tmp_path / "b")["method"]
    for k in wb:
        assert torch.equal(wa[k], wb[k]), k


def test_activation_checkpointing_trains_the_same_weights(fsdp_npz, tmp_path):
    pretrain(_cfg(fsdp_npz, activation_checkpointing=True, max_steps=2), tmp_path / "ac", quiet=True)
    pretrain(_cfg(fsdp_npz, max_steps=2), tmp_path / "plain", quiet=True)
    a, b = _final(tmp_path / "ac")["method"], _final(tmp_path / "plain")["method"]
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    assert _losses(tmp_path / "ac") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-6)


def test_activation_checkpointing_on_a_batchnorm_backbone_is_a_one_line_error(fsdp_npz, tmp_path):
    cfg = tiny_run_config("simclr", data=fsdp_npz, activation_checkpointing=True)  # the ConvNet
    expected = "train.activation_checkpointing: backbone 'convnet' does not support"
    with pytest.raises(ConfigError, match=expected) as e:
        pretrain(cfg, tmp_path / "r", quiet=True)
    assert "\n" not in str(e.value)


def test_fsdp_with_the_online_knn_monitor_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"train.fsdp: the online kNN monitor \(train.knn_every\)") as e:
        build_run_config({"train": {"fsdp": True, "knn_every": 1}})
    assert "\n" not in str(e.value)
    assert build_run_config({"train": {"fsdp": True}}).train.fsdp is True


def test_fsdp_and_activation_checkpointing_may_change_on_resume(tmp_path):
    saved = build_run_config({}).to_dict()
    new = build_run_config({"train": {"fsdp": True, "activation_checkpointing": True}}).to_dict()
    changes = check_resume_config(saved, new, tmp_path / "step-00000002.pt")
    assert changes == {"train.activation_checkpointing": (False, True), "train.fsdp": (False, True)}
