"""Collapse monitors: formulas against a direct re-derivation; constant and one-hot inputs are flagged, random
ones are not; the trainer logs them and --stop-on-collapse ends the run keeping its checkpoint."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_blobs, save_npz, tiny_run_config

from selfsup.backbones.base import build_backbone
from selfsup.engine.monitors import CollapseMonitor, CollapseWarning, embedding_stats, entropy_stats
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.trainer import pretrain
from selfsup.methods.simclr import SimCLR


def flagged(emb=None, probs=None) -> set[str]:
    m = CollapseMonitor()
    return set(m.problems(m.measure(emb, probs)))


def test_rankme_and_std_match_slow_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g)
    s = np.linalg.svd(z.numpy(), compute_uv=False)
    p = s / s.sum()
    rank = math.exp(-sum(pi * math.log(pi + 1e-7) for pi in p))
    zn = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    std = np.mean([np.std(zn[:, j], ddof=1) for j in range(16)])
    st = embedding_stats(z)
    assert float(st["rankme"]) == pytest.approx(rank, rel=1e-4)
    assert float(st["emb_std"]) == pytest.approx(std, rel=1e-4)
    assert float(st["emb_std_ratio"]) == pytest.approx(1.0, abs=0.15)  # Gaussian: 1/sqrt(d)


def test_entropies_match_slow_formulas():
    p = torch.softmax(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    h = np.mean([-sum(float(v) * math.log(float(v)) for v in row) for row in p])
    m = p.mean(0)
    hm = -sum(float(v) * math.log(float(v)) for v in m)
    st = entropy_stats(p)
    assert float(st["out_entropy"]) == pytest.approx(h, rel=1e-5)
    assert float(st["out_marginal_entropy"]) == pytest.approx(hm, rel=1e-5)


def test_constant_and_one_hot_embeddings_are_flagged():
    assert flagged(torch.ones(32, 16) * 3) == {"emb_std", "rankme"}
    one_hot = torch.zeros(32, 16)
    one_hot[:, 3] = 1
    assert flagged(one_hot + 1e-4 * torch.randn(32, 16)) == {"emb_std", "rankme"}


def test_random_embeddings_and_random_init_features_are_not_flagged():
    assert flagged(torch.randn(32, 16)) == set()
    torch.manual_seed(0)
    x = make_blobs(n=32).train.images.float() / 255
    assert flagged(build_backbone("convnet", width=0.25)(x).detach()) == set()


def test_softmax_collapse_forms_are_flagged():
    k = 10
    assert flagged(probs=torch.full((32, k), 1 / k)) == {"out_entropy"}  # form 1: uniform
    same = torch.zeros(32, k)
    same[:, 2] = 1
    assert flagged(probs=same) == {"out_marginal_entropy"}  # form 2: one dimension dominates
    diverse = torch.nn.functional.one_hot(torch.arange(32) % k, k).float()  # confident but diverse: healthy
    assert flagged(probs=diverse) == set()
    assert flagged(probs=torch.softmax(3 * torch.randn(32, k), dim=1)) == set()


def test_alert_is_reported_once_until_recovery():
    m = CollapseMonitor()
    bad, good = m.measure(torch.ones(8, 4)), m.measure(torch.randn(8, 4))
    assert len(m.check(bad)) == 2 and m.check(bad) == [] and m.check(good) == [] and len(m.check(bad)) == 2


@pytest.fixture
def collapsing_simclr(monkeypatch):
    orig = SimCLR.forward

    def forward(self, batch, ctx=None):
        out = orig(self, batch, ctx)
        out.embedding = torch.ones_like(out.embedding)  # what a collapsed encoder produces
        return out

    monkeypatch.setattr(SimCLR, "forward", forward)


def _cfg(tmp_path, stop: bool):
    npz = save_npz(make_blobs(n=32, size=16), tmp_path / "b.npz")
    return tiny_run_config("simclr", {"proj_hidden_dim": 16, "proj_dim": 8}, data=npz, optim={}, log_every=2,
                           stop_on_collapse=stop)


def test_trainer_logs_monitors_and_stops_on_collapse(tmp_path, collapsing_simclr):
    with pytest.warns(CollapseWarning, match="possible collapse"):
        res = pretrain(_cfg(tmp_path, stop=True), tmp_path / "run", quiet=True)
    assert res.stopped == "collapsed" and res.steps == 2
    assert list_checkpoints(tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["rankme"] == pytest.approx(1.0, abs=0.01) and rec["emb_std"] == pytest.approx(0.0, abs=1e-6)
    assert "embedding std" in json.loads((tmp_path / "run" / "run.json").read_text())["collapse"]


def test_trainer_without_stop_only_warns(tmp_path, collapsing_simclr):
    with pytest.warns(CollapseWarning):
        res = pretrain(_cfg(tmp_path, stop=False), tmp_path / "run", quiet=True)
    assert res.stopped == "done" and res.steps == 8
