"""Evaluation: kNN (Wu et al. 2018 weighted vote) against a slow loop, chunking, linear probe, feature extraction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_accuracy, knn_predict
from selfsup.evaluation.linear import linear_probe


def clusters(n_per: int, classes: int, dim: int = 16, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    return x, y


def knn_loop(tr, ytr, te, k, tau, c):
    """For each test row: the k most cosine-similar train rows each vote exp(sim/τ) (k=1: one plain vote)."""
    preds = []
    for q in te:
        sims = [float(F.cosine_similarity(q, t, dim=0)) for t in tr]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * c
        for i in order:
            votes[int(ytr[i])] += torch.tensor(sims[i] / tau).exp().item() if k > 1 else 1.0
        preds.append(max(range(c), key=lambda j: votes[j]))
    return torch.tensor(preds)


def test_knn_separable_features_is_perfect():
    xtr, ytr = clusters(20, 5, seed=0)
    xte, yte = clusters(10, 5, seed=0)
    xte = xte + 0.05 * torch.randn_like(xte)
    assert knn_accuracy(xtr, ytr, xte, yte, k=20) == 1.0
    assert knn_accuracy(xtr, ytr, xte, yte, k=1) == 1.0


def test_knn_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(1)
    xtr, xte = torch.randn(800, 16, generator=g), torch.randn(800, 16, generator=g)
    ytr, yte = torch.randint(0, 4, (800,), generator=g), torch.randint(0, 4, (800,), generator=g)
    assert abs(knn_accuracy(xtr, ytr, xte, yte, k=20) - 0.25) < 0.07


@pytest.mark.parametrize("k", [1, 5])
def test_knn_matches_slow_loop(k):
    g = torch.Generator().manual_seed(2)
    tr, te = torch.randn(30, 6, generator=g), torch.randn(12, 6, generator=g)
    ytr = torch.randint(0, 3, (30,), generator=g)
    got = knn_predict(tr, ytr, te, k=k, temperature=0.5)
    assert torch.equal(got, knn_loop(tr, ytr, te, k, 0.5, 3))


def test_knn_chunking_gives_the_same_result():
    g = torch.Generator().manual_seed(3)
    tr, te = torch.randn(200, 8, generator=g), torch.randn(97, 8, generator=g)
    ytr = torch.randint(0, 6, (200,), generator=g)
    whole = knn_predict(tr, ytr, te, k=20, chunk=10_000)
    for chunk in (1, 7, 32):
        assert torch.equal(knn_predict(tr, ytr, te, k=20, chunk=chunk), whole)


def test_knn_edge_cases():
    tr, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    assert knn_predict(tr, y, tr, k=20).tolist() == [0, 1, 2]  # k larger than the train set
    assert knn_predict(tr, y, tr[:1], k=1, num_classes=10).tolist() == [0]
    with pytest.raises(ValueError, match="3 train features but 2 labels"):
        knn_predict(tr, y[:2], tr)


def test_linear_probe_separable_is_near_perfect():
    xtr, ytr = clusters(30, 4, dim=8, noise=0.5, seed=4)
    xte, yte = clusters(15, 4, dim=8, noise=0.5, seed=4)
    r = linear_probe(xtr, ytr, xte + 0.1 * torch.randn_like(xte), yte)
    assert r["top1"] >= 0.98
    assert r["l2"] in (1e-5, 1e-4, 1e-3, 1e-2) and 0.0 <= r["val_top1"] <= 1.0


def test_linear_probe_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(5)
    xtr, xte = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    ytr, yte = torch.randint(0, 2, (300,), generator=g), torch.randint(0, 2, (300,), generator=g)
    assert abs(linear_probe(xtr, ytr, xte, yte)["top1"] - 0.5) < 0.12


@pytest.mark.parametrize("training", [True, False])
def test_extract_features_shapes_and_mode_restored(training):
    data = make_blobs(n=20, size=16)
    bb = build_backbone("convnet", width=0.25)
    bb.train(training)
    cpu = torch.device("cpu")
    f, y = extract_features(bb, data.train, data.mean, data.std, cpu, batch_size=10)
    assert f.shape == (20, bb.num_features) and f.dtype == torch.float32
    assert torch.equal(y, data.train.labels)  # dataset order
    assert bb.training is training and all(m.training is training for m in bb.modules())
    # eval mode inside: features of one image do not depend on the batch it is in
    f1, _ = extract_features(bb, data.train, data.mean, data.std, cpu, batch_size=20)
    torch.testing.assert_close(f, f1, atol=1e-5, rtol=1e-4)
    fs, _ = extract_features(bb, data.train, data.mean, data.std, cpu, batch_size=20, stage="block2")
    assert fs.shape == (20, bb.block2[0].out_channels)
    fm, ym = extract_features(bb, data.train, data.mean, data.std, cpu, batch_size=10, max_images=10)
    assert fm.shape == (10, bb.num_features) and torch.equal(ym, data.train.labels[:10])
    torch.testing.assert_close(fm, f[:10])
