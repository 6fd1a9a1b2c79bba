"""Masked image modelling: masks, patchify, MAE, the VQ tokenizer, BEiT, attention maps of runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_blobs

import selfsup.methods.beit as beit_mod
import selfsup.methods.mae as mae_mod
from selfsup.augment.masking import block_masking, gather_tokens, patchify, random_masking, unpatchify, unshuffle
from selfsup.backbones import build_backbone
from selfsup.cli.main import main
from selfsup.config import ConfigError, build_run_config
from selfsup.engine.trainer import pretrain
from selfsup.losses.masked import masked_cross_entropy, masked_mse, normalize_patches
from selfsup.methods.base import ViewBatch, build_method


def vit(size: int = 16, patch: int | None = None):
    torch.manual_seed(0)
    return build_backbone("vit-test", image_size=size, patch_size=patch)


# -- masks and patches ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.75, 0.4, 0.1])
def test_random_masking_keeps_exact_count_and_unshuffle_restores_order(ratio):
    b, n = 5, 16
    m = random_masking(b, n, ratio, generator=torch.Generator().manual_seed(0))
    keep = int(n * (1 - ratio))
    assert m.ids_keep.shape == (b, keep)
    assert (m.mask.sum(1) == n - keep).all()
    for i in range(b):  # the mask is False exactly at the kept indices
        assert set(m.ids_keep[i].tolist()) == set((~m.mask[i]).nonzero().flatten().tolist())
    assert len({tuple(r.tolist()) for r in m.mask}) > 1  # independent per sample
    x = torch.arange(b * n, dtype=torch.float32).reshape(b, n, 1)
    ids_shuffle = torch.argsort(m.ids_restore, dim=1)
    shuffled = gather_tokens(x, ids_shuffle)
    assert torch.equal(shuffled[:, :keep], gather_tokens(x, m.ids_keep))
    assert torch.equal(unshuffle(shuffled, m.ids_restore), x)


def test_block_masking_exact_count_and_blocks():
    g = torch.Generator().manual_seed(0)
    mask = block_masking(6, (8, 8), 0.4, generator=g)
    assert mask.shape == (6, 64) and mask.dtype == torch.bool
    assert (mask.sum(1) == round(64 * 0.4)).all()
    grid = mask.view(6, 8, 8)
    # blocks: most masked patches have a masked 4-neighbour (random masking at 40% would give ~64%)
    nb = torch.zeros_like(grid)
    nb[:, 1:] |= grid[:, :-1]
    nb[:, :-1] |= grid[:, 1:]
    nb[:, :, 1:] |= grid[:, :, :-1]
    nb[:, :, :-1] |= grid[:, :, 1:]
    assert (nb & grid).sum() / grid.sum() > 0.85


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5])
def test_mask_ratio_outside_open_interval_is_one_line_error(bad):
    with pytest.raises(ConfigError, match=r"mask_ratio must be in \(0, 1\)"):
        random_masking(2, 16, bad)
    with pytest.raises(ConfigError, match=r"method.mask_ratio must be in \(0, 1\)"):
        build_method("mae", vit(), {"mask_ratio": bad})
    with pytest.raises(ConfigError, match=r"method.mask_ratio must be in \(0, 1\)"):
        build_method("beit", vit(), {"mask_ratio": bad, "tokenizer": "random"})


def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p[1, 4].view(4, 4, 3), x[1, :, 4:8, 4:8].permute(1, 2, 0))  # row 1, column 1
    assert torch.equal(unpatchify(p, 4, (2, 3), 3), x)
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        patchify(torch.randn(1, 3, 10, 8), 4)


# -- MAE --------------------------------------------------------------------------------------------------------
def test_masked_mse_matches_slow_formula_and_ignores_visible():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    mask = torch.rand(3, 5) > 0.5
    mask[0, 0] = True
    num = sum(((pred[b, i] - target[b, i]) ** 2).mean() for b in range(3) for i in range(5) if mask[b, i])
    assert torch.allclose(masked_mse(pred, target, mask), num / mask.sum(), atol=1e-6)
    changed = target.clone()
    changed[~mask] += 100.0
    assert torch.equal(masked_mse(pred, changed, mask), masked_mse(pred, target, mask))


def test_normalize_patches():
    x = torch.randn(2, 3, 16) * 5 + 2
    y = normalize_patches(x)
    for b in range(2):
        for i in range(3):
            row = x[b, i]
            expect = (row - row.mean()) / (row.var(unbiased=True) + 1e-6).sqrt()
            assert torch.allclose(y[b, i], expect, atol=1e-5)


def test_mae_encoder_sees_visible_patches_and_loss_ignores_them(monkeypatch):
    method = build_method("mae", vit(), {"decoder_dim": 32, "decoder_heads": 2, "decoder_depth": 1})
    x = torch.randn(4, 3, 16, 16)
    seen, masks = [], []
    orig_tokens = method.backbone.forward_tokens
    monkeypatch.setattr(method.backbone, "forward_tokens",
                        lambda x, **kw: seen.append(orig_tokens(x, **kw).shape) or orig_tokens(x, **kw))
    orig_mask = mae_mod.random_masking
    monkeypatch.setattr(mae_mod, "random_masking", lambda *a, **k: masks.append(orig_mask(*a, **k)) or masks[-1])
    torch.manual_seed(1)
    loss = method(ViewBatch([x])).loss
    assert seen[0] == (4, 1 + 4, 32)  # 16 patches, 75% masked: CLS + 4 visible
    mask = masks[0].mask

    def corrupt(img, p):
        t = patchify(img, p)
        return torch.where(mask.unsqueeze(-1), t, t + 50.0 * torch.randn_like(t))

    monkeypatch.setattr(mae_mod, "patchify", corrupt)
    torch.manual_seed(1)
    assert torch.allclose(method(ViewBatch([x])).loss, loss, atol=1e-6)


def test_mae_needs_a_vit():
    with pytest.raises(ConfigError, match="method 'mae' needs a ViT backbone"):
        build_method("mae", build_backbone("convnet", width=0.25))


def test_mae_pixel_target_without_norm():
    method = build_method("mae", vit(), {"decoder_dim": 32, "decoder_heads": 2, "decoder_depth": 1,
                                         "norm_pix_loss": False})
    assert torch.isfinite(method(ViewBatch([torch.randn(2, 3, 16, 16)])).loss)


# -- tokenizer ----------------------------------------------------------------------------------------------------
def test_tokenizer_reconstruction_falls_and_uses_several_codes():
    data = make_blobs(n=32, size=16)
    torch.manual_seed(0)
    method = build_method("tokenizer", vit(), {"codebook_size": 32, "code_dim": 8, "hidden_dim": 16})
    assert method.tokenizer.patch_size == 4  # taken from the ViT
    views = method.make_views(16, data.mean, data.std)
    x, idx, _ = next(data.train.batches(32, shuffle=False))
    vs = views(x, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3)
    recon = []
    for _ in range(20):
        out = method(ViewBatch(vs, idx))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        recon.append(float(out.logs["recon"]))
    assert min(recon[-3:]) < 0.8 * recon[0], recon
    assert out.logs["codes_used"] > 1 and out.logs["perplexity"] > 1.5
    assert "dead_codes" in out.logs
    ids = method.tokenizer.encode(vs[0])
    assert ids.shape == (32, 4, 4) and ids.unique().numel() > 1


def test_tokenizer_perplexity_is_exp_entropy_and_dead_codes_restart():
    tok = build_method("tokenizer", vit(), {"codebook_size": 8, "code_dim": 4, "hidden_dim": 8,
                                            "dead_after": 1}).tokenizer
    x = torch.randn(2, 3, 16, 16)
    out = tok.quantize_train(x)
    counts = torch.bincount(out["ids"].flatten(), minlength=8).float()
    p = counts / counts.sum()
    h = -sum(float(v) * math.log(float(v)) for v in p if v > 0)
    assert math.isclose(float(out["perplexity"]), math.exp(h), rel_tol=1e-5)
    tok.last_used.zero_()
    tok.step.fill_(5)  # every code looks unused for 5 steps: all are restarted from encoder outputs
    before = tok.codebook.detach().clone()
    tok.quantize_train(x)
    assert not torch.allclose(before, tok.codebook.detach())


# -- BEiT ---------------------------------------------------------------------------------------------------------
def test_masked_cross_entropy_matches_slow_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 6, 5), torch.randint(0, 5, (2, 6))
    mask = torch.rand(2, 6) > 0.4
    mask[0, 0] = True
    terms = [-F.log_softmax(logits[b, i], -1)[target[b, i]] for b in range(2) for i in range(6) if mask[b, i]]
    assert torch.allclose(masked_cross_entropy(logits, target, mask), torch.stack(terms).mean(), atol=1e-6)


def test_beit_loss_only_at_masked_positions(monkeypatch):
    method = build_method("beit", vit(), {"tokenizer": "random"})
    x = torch.randn(4, 3, 16, 16)
    masks = []
    orig_mask = beit_mod.block_masking
    monkeypatch.setattr(beit_mod, "block_masking", lambda *a, **k: masks.append(orig_mask(*a, **k)) or masks[-1])
    torch.manual_seed(3)
    loss = method(ViewBatch([x])).loss
    mask = masks[-1]
    assert (mask.sum(1) == round(16 * 0.4)).all()
    orig_ids = method.target_ids
    monkeypatch.setattr(method, "target_ids",
                        lambda img: torch.where(mask, orig_ids(img), torch.randint_like(orig_ids(img), 0, 64)))
    torch.manual_seed(3)
    assert torch.allclose(method(ViewBatch([x])).loss, loss, atol=1e-6)


def test_beit_without_tokenizer_says_how_to_train_one():
    with pytest.raises(ConfigError, match=r"beit needs method.tokenizer=.*selfsup pretrain --method tokenizer") as e:
        build_method("beit", vit())
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not exist.*--method tokenizer"):
        build_method("beit", vit(), {"tokenizer": "/no/such/run"})


def _npz(tmp_path, size=16):
    d = make_blobs(n=32, size=size)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=d.train.images.permute(0, 2, 3, 1).numpy(), y_train=d.train.labels.numpy(),
             x_test=d.test.images.permute(0, 2, 3, 1).numpy(), y_test=d.test.labels.numpy())
    return str(path)


def _pretrain(tmp_path, name, method, backbone, data, **extra):
    cfg = build_run_config({"method": {"name": method, **extra}, "data": {"path": data},
                            "backbone": {"name": backbone, "width": 0.25},
                            "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "log_every": 1}})
    pretrain(cfg, tmp_path / name, quiet=True)
    return str(tmp_path / name)


def test_tokenizer_run_is_reused_by_beit_and_attention_maps_of_runs(tmp_path, capsys):
    data = _npz(tmp_path)
    tok_run = _pretrain(tmp_path, "tok", "tokenizer", "vit-test", data, codebook_size=16, code_dim=8, hidden_dim=16)
    beit = build_method("beit", vit(), {"tokenizer": tok_run})
    from selfsup.engine.rundir import latest_checkpoint

    sd = latest_checkpoint(tok_run)[1]["method"]
    assert torch.equal(beit.tokenizer.codebook, sd["backbone.codebook"])
    assert not any(p.requires_grad for p in beit.tokenizer.parameters())
    ckpt_file = str(latest_checkpoint(tok_run)[0])
    assert build_method("beit", vit(), {"tokenizer": ckpt_file}).tokenizer.codebook_size == 16
    with pytest.raises(ConfigError, match="patch size 4 .* patch size 8"):
        build_method("beit", vit(32, patch=8), {"tokenizer": tok_run})

    # a BEiT run on the trained tokenizer, then its attention maps through the CLI
    beit_run = _pretrain(tmp_path, "beit", "beit", "vit-test", data, tokenizer=tok_run)
    assert main(["viz", "attention", beit_run, "--n", "3", "--out", str(tmp_path / "maps")]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["attn-000.png", "attn-001.png", "attn-002.png"]

    # not a tokenizer run / not a ViT run: one-line errors
    cnn_run = _pretrain(tmp_path, "cnn", "simclr", "convnet", data)
    with pytest.raises(ConfigError, match="is a 'simclr' run, not a tokenizer run"):
        build_method("beit", vit(), {"tokenizer": cnn_run})
    capsys.readouterr()
    assert main(["viz", "attention", cnn_run, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "attention maps need a ViT run" in err and "convnet" in err and "\n" not in err
