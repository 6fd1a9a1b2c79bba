"""Engine: schedules, LARS, parameter groups, atomic/safe checkpoints, exact resume, NaN stop, run-dir files, eval.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from torch import nn

from selfsup.components.schedules import Constant, Cosine, LinearWarmup
from selfsup.config import OptimConfig
from selfsup.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from selfsup.engine.optim import LARS, build_optimizer, param_groups
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.schedules import warmup_cosine
from selfsup.engine.trainer import TrainingError, pretrain


# ----------------------------------------------------------------------------------------------------- schedules
def test_warmup_then_cosine():
    lrs = warmup_cosine(1.0, total_steps=20, warmup_steps=4, final=0.1)
    assert len(lrs) == 20
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear from base/warmup up to base
    assert lrs[4] == pytest.approx(1.0)  # cosine starts at the peak
    tail = lrs[4:]
    assert all(a >= b for a, b in zip(tail, tail[1:]))  # then decays monotonically
    assert lrs[-1] > 0.1 and lrs[-1] == pytest.approx(0.1, abs=0.02)  # towards `final`, never below
    mid = 4 + 8  # half-way through the cosine part
    assert lrs[mid] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)


def test_schedule_edge_cases():
    assert warmup_cosine(2.0, 5, 0)[0] == pytest.approx(2.0)
    assert warmup_cosine(2.0, 1, 10) == pytest.approx([2.0])
    assert len(warmup_cosine(1.0, 0, 0)) == 1
    assert Cosine(0.99, 1.0)(0.0) == pytest.approx(0.99) and Cosine(0.99, 1.0)(1.0) == pytest.approx(1.0)
    assert Cosine(0.0, 1.0)(0.5) == pytest.approx(0.5) and Cosine(0.0, 1.0)(2.0) == pytest.approx(1.0)
    assert LinearWarmup(0.04, 0.07, 0.5)(0.25) == pytest.approx(0.055) and LinearWarmup(0.04, 0.07, 0.5)(0.9) == 0.07
    assert Constant(3.0)(0.7) == 3.0


# ----------------------------------------------------------------------------------------------------- optimizers
def test_lars_step_matches_hand_computation():
    torch.manual_seed(0)
    p0 = torch.randn(3, 4, dtype=torch.float64)
    g1, g2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    b0, bg = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    w = nn.Parameter(p0.clone())
    bias = nn.Parameter(b0.clone())
    lr, mom, wd, eta = 0.5, 0.9, 0.01, 0.001
    opt = LARS([{"params": [w], "weight_decay": wd}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
               lr=lr, momentum=mom, trust_coefficient=eta)

    # by hand: d = g + wd·p; q = η‖p‖/‖d‖; v = m·v + q·d; p ← p − lr·v
    d1 = g1 + wd * p0
    v = eta * p0.norm() / d1.norm() * d1
    p1 = p0 - lr * v
    w.grad, bias.grad = g1.clone(), bg.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), p1)
    torch.testing.assert_close(bias.detach(), b0 - lr * bg)  # excluded: no decay, no trust ratio

    d2 = g2 + wd * p1
    v = mom * v + eta * p1.norm() / d2.norm() * d2
    p2 = p1 - lr * v
    w.grad, bias.grad = g2.clone(), bg.clone()
    opt.step()
    torch.testing.assert_close(w.detach(), p2)
    torch.testing.assert_close(bias.detach(), b0 - lr * bg - lr * (mom * bg + bg))


def test_lars_zero_norms_fall_back_to_plain_sgd():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.ln = nn.LayerNorm(2)


def test_param_groups_exclude_norms_and_biases():
    m = Tiny()
    decay, no_decay = param_groups(m, 0.05)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([m.conv.weight, m.fc.weight]) and decay["weight_decay"] == 0.05
    assert ids(no_decay["params"]) == ids([m.bn.weight, m.bn.bias, m.fc.bias, m.ln.weight, m.ln.bias])
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    (only,) = param_groups(m, 0.05, exclude_norm_bias=False)
    assert len(only["params"]) == 7
    m.fc.weight.requires_grad_(False)
    assert id(m.fc.weight) not in ids(param_groups(m, 0.05)[0]["params"])


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(Tiny(), OptimConfig(name=name), lr=0.1, weight_decay=0.01, device=torch.device("cpu"))
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


def test_unknown_optimizer():
    from selfsup.config import ConfigError

    with pytest.raises(ConfigError, match="adagrad.*sgd, adamw, lars"):
        build_optimizer(Tiny(), OptimConfig(name="adagrad"), 0.1, 0.0, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------- checkpoints
class Explodes:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "ck" / "step-1.pt"
    save_checkpoint({"w": torch.arange(5), "step": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"w": torch.zeros(1000), "step": 2, "bad": Explodes()}, path)
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["step-1.pt"]  # no temp file left behind


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_load_checkpoint_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"step": 1, "x": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused: loading it would execute code.*_touch") as e:
        load_checkpoint(evil)
    assert "evil.pt" in str(e.value) and "\n" not in str(e.value)
    assert "weights_only" not in str(e.value)  # no advice to retry unsafely
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load does run it
    assert marker.exists()


def test_load_checkpoint_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint") as e:
        load_checkpoint(junk)
    assert "weights_only" not in str(e.value)
    good = save_checkpoint({"w": torch.ones(100)}, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)


# ----------------------------------------------------------------------------------------------------- training runs
def run_cfg(data: Path, **train):
    return tiny_run_config("simclr", {"proj_hidden_dim": 32, "proj_dim": 16}, data=data, **{"seed": 0, **train})


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(list_checkpoints(run)[0])["method"]


def test_resume_continues_the_same_run_exactly(blobs_npz, tmp_path):
    """8 steps straight == 6 steps with checkpoints every 3, a crash after step 5 (checkpoint 6 lost), resume to 8."""
    straight = tmp_path / "straight"
    res = pretrain(run_cfg(blobs_npz), straight, quiet=True)
    assert res.steps == 8 and res.stopped == "done"

    resumed = tmp_path / "resumed"
    r1 = pretrain(run_cfg(blobs_npz, max_steps=6, checkpoint_every=3), resumed, quiet=True)
    assert r1.steps == 6 and r1.stopped == "max_steps"
    assert [p.name for p in list_checkpoints(resumed)] == ["step-00000006.pt", "step-00000003.pt"]
    list_checkpoints(resumed)[0].unlink()  # as if the run died before writing step 6: resume mid-epoch from 3
    r2 = pretrain(run_cfg(blobs_npz, checkpoint_every=3), resumed, resume=True, quiet=True)
    assert r2.steps == 8

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in b] == list(range(1, 9))  # the lines after step 3 were replaced, not duplicated
    for ma, mb in zip(a, b):
        assert (ma["step"], ma["epoch"], ma["lr"], ma["loss"]) == (mb["step"], mb["epoch"], mb["lr"], mb["loss"])
    wa, wb = final_weights(straight), final_weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_run_dir_contents(blobs_npz, tmp_path):
    out = tmp_path / "run"
    pretrain(run_cfg(blobs_npz, max_steps=3, log_every=2), out, quiet=True)
    lines = read_metrics(out)
    assert [m["step"] for m in lines] == [2, 3]  # every log_every steps and at the end
    for m in lines:
        assert {"step", "epoch", "loss", "lr", "images_per_s"} <= set(m)
        assert math.isfinite(m["loss"]) and m["images_per_s"] > 0
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["backbone"]["name"] == "convnet" and saved["method"]["proj_dim"] == 16
    ck = load_checkpoint(list_checkpoints(out)[0])
    assert ck["config"] == saved and ck["step"] == 3 and ck["method_name"] == "simclr"
    assert {"method", "optimizer", "rng", "total_steps"} <= set(ck)
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 3 and run["stopped"] == "max_steps"


def _nan_after(monkeypatch, bad_step: int) -> None:
    from selfsup.methods.simclr import SimCLR

    original = SimCLR.forward

    def forward(self, batch, ctx=None):
        out = original(self, batch, ctx)
        if ctx is not None and ctx.step >= bad_step:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", forward)


@pytest.mark.parametrize("keep,want", [(2, [6, 4]), (0, [6, 4, 2]), (1, [6])])
def test_keep_checkpoints_keeps_the_newest_or_all(blobs_npz, tmp_path, keep, want):
    """train.keep_checkpoints: the newest K checkpoints stay (2 by default); 0 keeps every one (probing along a run)."""
    out = tmp_path / f"keep{keep}"
    pretrain(run_cfg(blobs_npz, max_steps=6, checkpoint_every=2, keep_checkpoints=keep), out, quiet=True)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(out)] == want


@pytest.mark.parametrize("log_every", [1, 10])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(blobs_npz, tmp_path, monkeypatch, log_every):
    """Whether the NaN is seen at a log step or not, no checkpoint written after it may replace the good ones."""
    _nan_after(monkeypatch, 3)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match="non-finite loss at step 3") as e:
        pretrain(run_cfg(blobs_npz, checkpoint_every=2, log_every=log_every), out, quiet=True)
    assert "\n" not in str(e.value)
    cks = list_checkpoints(out)
    assert cks, "the last good checkpoint must remain"
    ck = load_checkpoint(cks[0])
    assert ck["step"] <= 3
    assert all(torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point())


def test_nan_policy_skip_skips_updates_and_still_checkpoints(blobs_npz, tmp_path, monkeypatch, capsys):
    _nan_after(monkeypatch, 6)
    out = tmp_path / "skip"
    res = pretrain(run_cfg(blobs_npz, nan_policy="skip"), out, quiet=True)
    assert res.steps == 8
    assert "step 6: non-finite loss, update skipped" in capsys.readouterr().err
    ck = load_checkpoint(list_checkpoints(out)[0])
    assert ck["step"] == 8
    assert all(torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point())


def test_evaluate_run_writes_eval_json(blobs_npz, tmp_path):
    from selfsup.evaluation.runner import evaluate_run

    out = tmp_path / "ev"
    pretrain(run_cfg(blobs_npz, max_steps=2), out, quiet=True)
    res = evaluate_run(out, ["knn", "linear"], device="cpu", quiet=True)
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(res))
    for key in ("top1", "top1_k1"):
        assert 0.0 <= saved["knn"][key] <= 1.0
    assert 0.0 <= saved["linear"]["top1"] <= 1.0
    assert {"top1", "top1_k1"} <= set(saved["baseline"]["knn"]) and "top1" in saved["baseline"]["linear"]
    assert saved["protocol"]["step"] == 2 and saved["protocol"]["method"] == "simclr"
    assert saved["protocol"]["test_images"] == 16


def test_evaluate_run_rejects_unknown_protocol(blobs_npz, tmp_path):
    from selfsup.evaluation.runner import evaluate_run
    from selfsup.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown evaluator 'nope'; known: .*knn"):
        evaluate_run(tmp_path, ["nope"])
