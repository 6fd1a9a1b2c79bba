"""MemoryBank: update formula, sampling never draws the positive, size checks; NPID's NCE normaliser; PIRL's jigsaw."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

from selfsup.augment.pretext import inverse_permutation, jigsaw_tiles, permute_tiles, random_permutations, untile
from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, update_parts
from selfsup.components.memory_bank import MemoryBank
from selfsup.config import ConfigError
from selfsup.methods.base import ViewBatch, build_method


def test_update_is_momentum_average_then_normalised():
    torch.manual_seed(0)
    bank = MemoryBank(10, 4, momentum=0.5)
    old = bank.rows.clone()
    idx, f = torch.tensor([2, 7]), torch.randn(2, 4)
    bank.stage(idx, f)
    assert torch.equal(bank.rows, old)  # nothing changes before the engine's after_step
    update_parts(bank, StepContext())
    for row, fi in zip(idx.tolist(), f):
        v = 0.5 * old[row] + 0.5 * fi / fi.norm()
        assert torch.allclose(bank.rows[row], v / v.norm(), atol=1e-6)
    untouched = [i for i in range(10) if i not in (2, 7)]
    assert torch.equal(bank.rows[untouched], old[untouched])
    update_parts(bank, StepContext())  # a staged update is applied once
    assert torch.allclose(bank.rows.norm(dim=1), torch.ones(10), atol=1e-6)


def test_sampling_never_draws_the_positive_and_covers_the_rest():
    bank = MemoryBank(5, 2)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 2, 4, 4])
    draws = bank.sample_indices(idx, 2000, g)
    assert draws.shape == (4, 2000)
    assert not (draws == idx[:, None]).any()
    for b, i in enumerate(idx.tolist()):
        counts = torch.bincount(draws[b], minlength=5).float()
        others = [j for j in range(5) if j != i]
        assert counts[i] == 0 and (counts[others] > 350).all()  # ~500 each: uniform over the other rows
    two = MemoryBank(2, 2).sample_indices(torch.tensor([0, 1]), 50, g)
    assert (two[0] == 1).all() and (two[1] == 0).all()


def test_positives_and_negatives_layout():
    bank = MemoryBank(8, 3)
    idx = torch.tensor([1, 5])
    keys = bank.positives_and_negatives(idx, 4, torch.Generator().manual_seed(1))
    assert keys.shape == (2, 5, 3)
    assert torch.equal(keys[:, 0], bank.rows[idx])
    for b in range(2):  # every negative is a bank row other than the positive's
        for k in range(1, 5):
            matches = (bank.rows == keys[b, k]).all(dim=1).nonzero().flatten().tolist()
            assert matches and idx[b].item() not in matches


def test_bank_needs_num_train_and_rejects_another_dataset_size():
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    with pytest.raises(ConfigError, match="num_train"):
        build_method("npid", bb, {})
    a = build_method("npid", bb, {}, num_train=20)
    b = build_method("npid", build_backbone("convnet", in_channels=3, width=0.25), {}, num_train=30)
    with pytest.raises(ConfigError, match="data.path") as e:
        b.load_state_dict(a.state_dict())
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="bank_momentum"):
        MemoryBank(10, 2, momentum=1.0)


@pytest.mark.parametrize("name", ["npid", "pirl"])
def test_bank_methods_write_their_batch_after_the_step(name):
    torch.manual_seed(0)
    data = make_blobs(n=16, size=16)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    m = build_method(name, bb, {"num_negatives": 8}, num_train=16)
    x, idx, _ = next(data.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    vs = m.make_views(16, data.mean, data.std)(x, torch.Generator().manual_seed(0))
    old = m.bank.rows.clone()
    out = m(ViewBatch(vs, idx), StepContext(0, 4))
    assert torch.equal(m.bank.rows, old)
    update_parts(m, StepContext(0, 4))
    changed = (m.bank.rows != old).any(dim=1)
    assert changed[idx].all() and changed.sum() == len(idx)
    assert torch.isfinite(out.loss)


def test_npid_nce_estimates_the_normaliser_once():
    torch.manual_seed(0)
    data = make_blobs(n=16, size=16)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    m = build_method("npid", bb, {"loss": "nce", "num_negatives": 8}, num_train=16)
    x, idx, _ = next(data.train.batches(8, shuffle=False))
    views = m.make_views(16, data.mean, data.std)
    assert torch.isinf(m.criterion.log_norm)
    m(ViewBatch(views(x, torch.Generator().manual_seed(0)), idx), StepContext(0, 4))
    first = m.criterion.log_norm.clone()
    assert torch.isfinite(first)
    update_parts(m, StepContext(0, 4))
    m(ViewBatch(views(x, torch.Generator().manual_seed(1)), idx), StepContext(1, 4))
    assert torch.equal(m.criterion.log_norm, first)


# ---------------------------------------------------------------- PIRL's jigsaw transform

def test_jigsaw_tiles_are_the_grid_cells_in_row_major_order():
    x = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).reshape(2, 3, 9, 9)
    t = jigsaw_tiles(x, 3)
    assert t.shape == (2, 9, 3, 3, 3)
    for r in range(3):
        for c in range(3):
            assert torch.equal(t[:, r * 3 + c], x[:, :, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3])
    assert torch.equal(untile(t), x)
    odd = torch.randn(1, 1, 11, 10)  # 11 = 3·3 + 2: one pixel trimmed from each border; 10 = 3·3 + 1: one from the right
    assert torch.equal(untile(jigsaw_tiles(odd, 3)), odd[:, :, 1:10, 0:9])


def test_permutation_is_applied_per_sample_and_inverse_restores():
    x = torch.randn(4, 3, 12, 12)
    tiles = jigsaw_tiles(x, 3)
    perm = random_permutations(4, 9, torch.Generator().manual_seed(0))
    assert torch.equal(perm.sort(dim=1).values, torch.arange(9).expand(4, 9))
    shuffled = permute_tiles(tiles, perm)
    for b in range(4):
        for j in range(9):
            assert torch.equal(shuffled[b, j], tiles[b, perm[b, j]])
    restored = permute_tiles(shuffled, inverse_permutation(perm))
    assert torch.equal(restored, tiles) and torch.equal(untile(restored), x)
    with pytest.raises(ValueError, match="too small"):
        jigsaw_tiles(torch.zeros(1, 1, 2, 2), 3)


def test_pirl_jigsaw_embedding_depends_on_the_tile_order():
    torch.manual_seed(0)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    m = build_method("pirl", bb, {"num_negatives": 4}, num_train=8).eval()
    x = torch.randn(2, 3, 18, 18)
    torch.manual_seed(1)
    g1 = m.jigsaw_embedding(x)
    torch.manual_seed(2)
    g2 = m.jigsaw_embedding(x)
    assert g1.shape == (2, 128) and not torch.allclose(g1, g2)
    assert F.normalize(g1, dim=1).norm(dim=1).allclose(torch.ones(2))
