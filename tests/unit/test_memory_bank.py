"""MemoryBank: update formula, sampling never draws the positive, size checks; NPID's NCE normaliser; PIRL's jigsaw."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

from selfsup.augment.pretext import inverse_permutation, jigsaw_tiles, permute_tiles, random_permutations, untile
from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext, discard_staged, update_parts
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


def test_staging_accumulates_micro_batches_into_one_update():
    """Gradient accumulation: K forwards stage, one after_step writes every micro-batch's rows, exactly as one
    forward over the whole batch does."""
    torch.manual_seed(0)
    whole, split = MemoryBank(20, 4), MemoryBank(20, 4)
    split.rows.copy_(whole.rows)
    old = whole.rows.clone()
    idx, f = torch.randperm(20)[:8], torch.randn(8, 4)
    ctx = StepContext(step=3, total_steps=10)
    whole.stage(idx, f, ctx)
    split.stage(idx[:4], f[:4], ctx)
    split.stage(idx[4:], f[4:], ctx)
    update_parts(whole, ctx)
    update_parts(split, ctx)
    assert torch.equal(split.rows, whole.rows)
    changed = (split.rows != old).any(dim=1)
    assert changed[idx].all() and changed.sum() == len(idx)
    update_parts(split, ctx)  # the stage was emptied: a second after_step writes nothing
    assert torch.equal(split.rows, whole.rows)


def test_rows_staged_for_a_skipped_step_are_dropped():
    """A step skipped by nan_policy=skip never reaches after_step; its (possibly non-finite) rows must not be
    written with the next step's."""
    bank = MemoryBank(10, 4)
    old = bank.rows.clone()
    bank.stage(torch.tensor([1, 2]), torch.full((2, 4), float("nan")), StepContext(step=0))
    bank.stage(torch.tensor([3, 4]), torch.randn(2, 4), StepContext(step=1))
    update_parts(bank, StepContext(step=1))
    assert torch.isfinite(bank.rows).all()
    assert torch.equal(bank.rows[[1, 2]], old[[1, 2]]) and not torch.equal(bank.rows[[3, 4]], old[[3, 4]])
    bank.stage(torch.tensor([5]), torch.randn(1, 4), StepContext(step=2))
    discard_staged(bank)  # what a loop calls instead of update_parts when it skips the step
    update_parts(bank, StepContext(step=2))
    assert torch.equal(bank.rows[5], old[5])


@pytest.mark.parametrize("name", ["npid", "pirl"])
def test_bank_methods_under_grad_accumulation_write_the_whole_batch(name):
    """Two micro-batch forwards and one after_step (the engine's protocol with train.grad_accum_steps=2) write
    all B rows, equal to the one-forward update (eval-mode BN, so the micro-batches embed as the whole batch)."""
    torch.manual_seed(0)
    data = make_blobs(n=16, size=16)
    bb = build_backbone("convnet", in_channels=3, width=0.25, image_size=16)
    m = build_method(name, bb, {"num_negatives": 8}, num_train=16).eval()
    ref = build_method(name, build_backbone("convnet", in_channels=3, width=0.25, image_size=16),
                       {"num_negatives": 8}, num_train=16).eval()
    ref.load_state_dict(m.state_dict())
    x, idx, _ = next(data.train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    vs = m.make_views(16, data.mean, data.std)(x, torch.Generator().manual_seed(0))
    old = m.bank.rows.clone()
    ctx = StepContext(0, 4)
    with torch.no_grad():
        ref(ViewBatch(vs, idx), ctx)
        for part in (slice(0, 4), slice(4, 8)):
            m(ViewBatch([v[part] for v in vs], idx[part]), ctx)
    update_parts(ref, ctx)
    update_parts(m, ctx)
    changed = (m.bank.rows != old).any(dim=1)
    assert changed[idx].all() and changed.sum() == len(idx)
    torch.testing.assert_close(m.bank.rows, ref.bank.rows, rtol=1e-5, atol=1e-6)


def test_pretrain_with_grad_accumulation_writes_every_row_of_the_step(tmp_path, monkeypatch):
    import numpy as np

    from selfsup.config import build_run_config
    from selfsup.engine.trainer import pretrain

    ds = make_blobs(n=16, size=16)
    p = tmp_path / "blobs.npz"
    np.savez(p, x_train=ds.train.images.permute(0, 2, 3, 1).numpy(), y_train=ds.train.labels.numpy())
    written: list[int] = []
    original = MemoryBank.update

    def record(self, index, features):
        written.append(index.numel())
        original(self, index, features)

    monkeypatch.setattr(MemoryBank, "update", record)
    cfg = build_run_config({
        "method": {"name": "npid", "num_negatives": 8, "proj_hidden_dim": 16, "proj_dim": 8},
        "data": {"path": str(p)}, "backbone": {"name": "convnet", "width": 0.25},
        "train": {"epochs": 1, "batch_size": 8, "grad_accum_steps": 2, "max_steps": 2, "device": "cpu",
                  "seed": 0, "log_every": 1},
    })
    pretrain(cfg, tmp_path / "run", quiet=True)
    assert written == [8, 8]
