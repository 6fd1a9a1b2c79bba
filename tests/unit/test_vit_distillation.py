"""iBOT, DINOv2, MSN and PMSN: their losses against float64 re-derivations written here (values and gradients),
the masks (ratios, shapes, and that the student never sees what it must predict), Sinkhorn over ranks, stochastic
depth, and DINOv2's layer-wise learning rates through the engine."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import make_blobs, tiny_run_config

from selfsup.augment.masking import min_block_patches, partial_block_masks, patchify, random_masking, unpatchify
from selfsup.backbones import build_backbone
from selfsup.components.base import StepContext
from selfsup.components.sinkhorn import sinkhorn_knopp
from selfsup.components.sinkhorn_dist import distributed_sinkhorn
from selfsup.config import ConfigError, OptimConfig
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.optim import build_optimizer
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.trainer import pretrain
from selfsup.losses.distill_vit import (
    anchor_target_cross_entropy,
    ibot_patch_loss,
    koleo_loss,
    masked_patch_distillation,
    prior_kl,
)
from selfsup.methods.base import ViewBatch, build_method
from selfsup.methods.msn import power_law_prior
from selfsup.methods.vit_student import drop_path_rates, encode, run_blocks


def _g(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _vit(size: int = 16):
    torch.manual_seed(0)
    return build_backbone("vit-test", image_size=size)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ------------------------------------------------------------------------------------------- iBOT patch loss
def _mask():
    """(3, 5): image 0 masks 3 patches, image 1 one, image 2 none (it counts 0 in the mean over images)."""
    m = torch.zeros(3, 5, dtype=torch.bool)
    m[0, [0, 2, 4]] = True
    m[1, 3] = True
    return m


def _patch_loss_loops(s_full, q_full, mask, tau):
    """(1/B) Σ_b (1/max(1, n_b)) Σ_{i masked} −Σ_k q log softmax(s/τ), with explicit loops (float64 autograd)."""
    b, n, k = s_full.shape
    total = s_full.new_zeros(())
    for bi in range(b):
        count = int(mask[bi].sum())
        for i in range(n):
            if not mask[bi, i]:
                continue
            logits = [s_full[bi, i, j] / tau for j in range(k)]
            lse = torch.log(sum(torch.exp(v) for v in logits))
            ce = -sum(q_full[bi, i, j] * (logits[j] - lse) for j in range(k))
            total = total + ce / max(1, count)
    return total / b


def test_masked_patch_distillation_matches_loops_values_and_gradients():
    mask = _mask()
    s_full = _g(3, 5, 7, seed=0).requires_grad_(True)
    q_full = torch.softmax(_g(3, 5, 7, seed=1), dim=-1)
    tau = 0.1
    ref = _patch_loss_loops(s_full, q_full, mask, tau)
    loss = masked_patch_distillation(s_full[mask], q_full[mask], mask, tau)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(_grad(loss, s_full), _grad(ref, s_full), rtol=1e-10, atol=1e-12)


def test_masked_patch_distillation_stops_the_teacher_gradient_and_is_zero_without_masks():
    mask = _mask()
    s = _g(4, 6, seed=2).requires_grad_(True)
    q = torch.softmax(_g(4, 6, seed=3), dim=-1).requires_grad_(True)
    masked_patch_distillation(s, q, mask, 0.1).backward()
    assert s.grad is not None and q.grad is None
    none = torch.zeros(2, 5, dtype=torch.bool)
    assert masked_patch_distillation(torch.zeros(0, 6), torch.zeros(0, 6), none, 0.1).item() == 0.0
    with pytest.raises(ValueError, match="M = 4"):
        masked_patch_distillation(s[:3], q[:3].detach(), mask, 0.1)


def test_ibot_patch_loss_is_the_centred_sharpened_teacher():
    mask = _mask()
    s_full = _g(3, 5, 7, seed=4).requires_grad_(True)
    t_full = _g(3, 5, 7, seed=5)
    c = _g(7, seed=6) * 0.1
    tau_s, tau_t = 0.1, 0.04
    q_full = torch.softmax((t_full - c) / tau_t, dim=-1)
    ref = _patch_loss_loops(s_full, q_full, mask, tau_s)
    loss = ibot_patch_loss(s_full[mask], t_full[mask], c, mask, tau_s, tau_t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(_grad(loss, s_full), _grad(ref, s_full), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------ KoLeo
def _koleo_loops(x, eps=1e-8):
    """−mean_i log(||x̂_i − x̂_j* + ε|| + ε), j* the nearest other row on the sphere, by explicit loops."""
    b, d = x.shape
    xn = [x[i] / torch.sqrt(sum(x[i, k] ** 2 for k in range(d))) for i in range(b)]
    total = x.new_zeros(())
    for i in range(b):
        dists = {j: math.sqrt(sum((xn[i][k].item() - xn[j][k].item()) ** 2 for k in range(d)))
                 for j in range(b) if j != i}
        j = min(dists, key=dists.get)
        dist = torch.sqrt(sum((xn[i][k] - xn[j][k] + eps) ** 2 for k in range(d)))
        total = total - torch.log(dist + eps)
    return total / b


def test_koleo_matches_float64_nearest_neighbour_formula_values_and_gradients():
    x = _g(6, 4, seed=7).requires_grad_(True)
    ref = _koleo_loops(x)
    loss = koleo_loss(x)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(_grad(loss, x), _grad(ref, x), rtol=1e-8, atol=1e-10)


def test_koleo_is_lower_for_spread_points_and_refuses_a_single_row():
    spread = torch.eye(4, dtype=torch.float64)
    clustered = torch.ones(4, 4, dtype=torch.float64) + 0.01 * torch.eye(4, dtype=torch.float64)
    assert koleo_loss(spread).item() < koleo_loss(clustered).item()
    assert koleo_loss(spread).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.ones(1, 4))


# -------------------------------------------------------------------------------------------- MSN and PMSN
def test_anchor_target_cross_entropy_matches_loops_values_and_gradients():
    a = _g(3, 4, 5, seed=8).requires_grad_(True)
    q = torch.softmax(_g(4, 5, seed=9), dim=-1)
    tau = 0.1
    ref = a.new_zeros(())
    for i in range(3):
        for b in range(4):
            lse = torch.log(sum(torch.exp(a[i, b, k] / tau) for k in range(5)))
            ref = ref - sum(q[b, k] * (a[i, b, k] / tau - lse) for k in range(5)) / 12
    loss = anchor_target_cross_entropy(a, q, tau)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(_grad(loss, a), _grad(ref, a), rtol=1e-10, atol=1e-12)


def test_uniform_prior_kl_is_me_max_values_and_gradients():
    p = torch.softmax(_g(6, seed=10), dim=0).requires_grad_(True)
    me_max = math.log(6) - (-sum(p[k].item() * math.log(p[k].item()) for k in range(6)))  # log K − H(p̄)
    ref = sum(p[k] * (torch.log(p[k]) + math.log(6)) for k in range(6))  # KL(p̄ ‖ uniform), as a function of p̄
    loss = prior_kl(p)
    assert loss.item() == pytest.approx(me_max, rel=1e-12) and loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(_grad(loss, p), _grad(ref, p), rtol=1e-10, atol=1e-12)
    assert prior_kl(torch.full((6,), 1 / 6, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


def test_power_law_prior_and_its_kl_fixed_and_ranked():
    k, tau = 4, 0.25
    prior = power_law_prior(k, tau)
    assert prior.sum().item() == pytest.approx(1.0)
    for i in range(k - 1):
        assert (prior[i] / prior[i + 1]).item() == pytest.approx(((i + 2) / (i + 1)) ** tau)
    p = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    fixed = sum(p[i] * (torch.log(p[i]) - math.log(prior[i].item())) for i in range(k))
    loss = prior_kl(p, prior)
    assert loss.item() == pytest.approx(fixed.item(), rel=1e-12)
    torch.testing.assert_close(_grad(loss, p), _grad(fixed, p), rtol=1e-10, atol=1e-12)
    # ranked: the smallest KL over every assignment of prototypes to prior ranks
    best = min(sum(p[s].item() * (math.log(p[s].item()) - math.log(prior[i].item())) for i, s in enumerate(perm))
               for perm in itertools.permutations(range(k)))
    assert prior_kl(p, prior, ranked=True).item() == pytest.approx(best, rel=1e-12)
    order = [1, 3, 2, 0]  # p sorted by decreasing mass meets the prior's ranks 1..K
    ranked_ref = sum(p[s] * (torch.log(p[s]) - math.log(prior[i].item())) for i, s in enumerate(order))
    torch.testing.assert_close(_grad(prior_kl(p, prior, ranked=True), p), _grad(ranked_ref, p), rtol=1e-10, atol=1e-12)


def test_distributed_sinkhorn_equals_sinkhorn_knopp_in_one_process():
    s = _g(12, 5, seed=11)
    torch.testing.assert_close(distributed_sinkhorn(s, 0.05, 3), sinkhorn_knopp(s, 0.05, 3))
    q = distributed_sinkhorn(s.float(), 0.7, 3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))
    assert distributed_sinkhorn(torch.zeros(0, 5), 0.05).shape == (0, 5)


# ----------------------------------------------------------------------------------------------------- masks
def test_min_block_patches_follows_ibot_on_any_grid():
    assert min_block_patches((14, 14)) == 16  # iBOT's (14 // 3)² on a 224 px / 16 px grid
    assert min_block_patches((8, 8)) == 4
    assert min_block_patches((4, 4)) == 1


def test_partial_block_masks_ratios_probability_and_seed():
    grid, n = (8, 8), 64
    torch.manual_seed(0)
    m = partial_block_masks(200, grid, (0.1, 0.5), 0.5)
    assert m.shape == (200, n) and m.dtype == torch.bool
    counts = m.sum(dim=1)
    masked = counts > 0
    assert 70 < int(masked.sum()) < 130  # about half the images
    assert int(counts[masked].min()) >= round(0.1 * n) and int(counts.max()) <= round(0.5 * n)
    torch.manual_seed(0)
    assert torch.equal(partial_block_masks(200, grid, (0.1, 0.5), 0.5), m)
    assert not partial_block_masks(8, grid, (0.1, 0.5), 0.0).any()
    assert (partial_block_masks(8, grid, (0.3, 0.3), 1.0).sum(dim=1) == round(0.3 * n)).all()
    with pytest.raises(ConfigError, match="mask_ratio_min"):
        partial_block_masks(8, grid, (0.5, 0.1), 0.5)


def _views(method, n=8, seed=0):
    data = make_blobs(n=n, size=16)
    views = method.make_views(16, data.mean, data.std)
    x, idx, _ = next(data.train.batches(n, shuffle=False))
    return views(x, torch.Generator().manual_seed(seed)), idx


def test_ibot_student_never_sees_its_masked_patches_and_the_teacher_sees_them():
    method = build_method("ibot", _vit(), {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8,
                                           "mask_probability": 1.0, "drop_path_rate": 0.0})
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    mask = method.masks(x, 1)
    assert mask.shape == (4, 16) and (mask.sum(dim=1) > 0).all()
    p = method.backbone.patch_size
    patches = patchify(x, p)
    patches[mask] = torch.randn(int(mask.sum()), patches.shape[-1])  # new pixels where the student is masked
    x2 = unpatchify(patches, p, (4, 4), 3)
    bb = method.backbone
    a = encode(bb, x, mask=mask, mask_token=method.mask_token)
    b = encode(bb, x2, mask=mask, mask_token=method.mask_token)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the masked pixels never reach the student
    t1, t2 = method.teacher(x), method.teacher(x2)
    assert not torch.allclose(t1[1], t2[1])  # the teacher sees the whole crop


def test_msn_anchors_never_see_their_dropped_patches():
    bb = _vit()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    m = random_masking(3, 16, 0.25)
    patches = patchify(x, bb.patch_size)
    patches[m.mask] = 0.0
    x2 = unpatchify(patches, bb.patch_size, (4, 4), 3)
    torch.testing.assert_close(bb.forward_tokens(x, keep=m.ids_keep), bb.forward_tokens(x2, keep=m.ids_keep),
                               rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------------- stochastic depth
def test_drop_path_rates_linear_or_uniform():
    assert drop_path_rates(3, 0.2) == pytest.approx([0.0, 0.1, 0.2])
    assert drop_path_rates(3, 0.2, uniform=True) == [0.2, 0.2, 0.2]
    with pytest.raises(ConfigError, match="drop_path_rate"):
        drop_path_rates(3, 1.0)


def test_blocks_run_branch_by_branch_equal_the_backbone():
    """The method's stochastic-depth pass with every branch kept is the ViT's own forward; with every branch
    dropped the blocks are the identity."""
    bb = _vit()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ones = torch.ones(2, bb.depth, 2)
    torch.testing.assert_close(bb.norm(run_blocks(bb, bb.embed(x), ones)), bb.forward_tokens(x))
    torch.testing.assert_close(run_blocks(bb, bb.embed(x), torch.zeros(2, bb.depth, 2)), bb.embed(x))
    torch.manual_seed(6)
    dropped = encode(bb, x, drop_rates=[0.5, 0.5])
    assert dropped.shape == bb.forward_tokens(x).shape and torch.isfinite(dropped).all()


# ---------------------------------------------------------------------------------------------- the methods
@pytest.mark.parametrize("name", ["ibot", "dinov2"])
def test_ibot_and_dinov2_forward_logs_their_terms(name):
    over = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}
    method = build_method(name, _vit(), over)
    vs, idx = _views(method)
    out = method(ViewBatch(vs, idx), StepContext(0, 10))
    assert torch.isfinite(out.loss)
    assert {"cls_loss", "patch_loss", "mask_fraction"} <= set(out.logs)
    assert ("koleo" in out.logs) == (name == "dinov2")
    if name == "ibot":
        assert method.center is not None and method.center.pending is not None  # staged for after_step
        assert method.heads.patch_head is None and method.heads.patch_last is None  # one shared head
    else:
        assert method.center is None and method.patch_center is None  # Sinkhorn-Knopp instead
        assert method.heads.patch_head is not None  # separate heads
        torch.testing.assert_close(out.probs.sum(dim=-1), torch.ones(8))
    out.loss.backward()
    assert method.mask_token.grad is not None


def test_ibot_shared_head_needs_one_output_size():
    with pytest.raises(ConfigError, match="patch_out_dim"):
        build_method("ibot", _vit(), {"out_dim": 32, "patch_out_dim": 16})
    m = build_method("ibot", _vit(), {"out_dim": 32, "patch_out_dim": 16, "patch_head": "last-layer",
                                      "hidden_dim": 16, "bottleneck_dim": 8})
    assert m.heads.patch(torch.randn(5, 32)).shape == (5, 16)


def test_msn_and_pmsn_priors():
    over = {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 8}
    msn = build_method("msn", _vit(), over)
    pmsn = build_method("pmsn", _vit(), over)
    assert msn.prior is None and msn.cfg.sinkhorn and msn.cfg.prior == "uniform"
    assert pmsn.cfg.prior == "power-law" and not pmsn.cfg.sinkhorn
    torch.testing.assert_close(pmsn.prior, power_law_prior(8, 0.25).float())
    assert "prior" not in pmsn.state_dict()  # rebuilt from the config
    for method in (msn, pmsn):
        vs, idx = _views(method)
        out = method(ViewBatch(vs, idx), StepContext(0, 10))
        assert torch.isfinite(out.loss) and out.logs["prior_kl"].item() >= -1e-6
        assert out.probs.shape == (8, 8)


def test_msn_sinkhorn_targets_balance_the_sharpened_probabilities():
    msn = build_method("msn", _vit(), {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 4})
    cos = torch.tanh(_g(16, 4, seed=12)).float()
    sharp = torch.softmax(cos / (0.1 * 0.25), dim=-1)
    torch.testing.assert_close(msn._targets(cos), sinkhorn_knopp(sharp.log(), 1.0, 3))


# ------------------------------------------------------------------------------------ layer-wise lr decay
def test_dinov2_layer_decay_scales_and_optimizer_groups():
    method = build_method("dinov2", _vit(), {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8})
    scales = method.lr_scales()
    d = 0.9
    assert scales["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(d ** 2)
    assert scales["backbone.blocks.1.mlp.0.weight"] == pytest.approx(d)
    assert scales["backbone.cls_token"] == pytest.approx(d ** 3)
    assert scales["mask_token"] == pytest.approx(d ** 3)
    assert scales["backbone.patch_embed.weight"] == pytest.approx(d ** 3 * 0.2)
    assert scales["heads.cls_head.last_layer.weight"] == 1.0
    assert not any(k.startswith("teacher.") for k in scales)  # the EMA teacher has no gradients
    opt = build_optimizer(method, OptimConfig(name="adamw"), lr=0.1, weight_decay=0.04, device=torch.device("cpu"))
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len([p for p in method.parameters() if p.requires_grad])
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.1 * g.get("lr_scale", 1.0))
    assert build_method("ibot", _vit(), {"out_dim": 32}).lr_scales() == {}  # iBOT: one lr for all


def test_training_steps_keep_the_layer_decay_ratios(tmp_path):
    """The engine's per-step lr is the schedule's value times each group's scale (not one lr for all groups)."""
    pretrain(tiny_run_config("dinov2", max_steps=2), tmp_path / "run", data=make_blobs(n=16, size=16), quiet=True)
    groups = load_checkpoint(list_checkpoints(tmp_path / "run")[0])["optimizer"]["param_groups"]
    assert any("lr_scale" in g for g in groups)
    bases = [g["lr"] / g.get("lr_scale", 1.0) for g in groups]
    assert bases[0] > 0 and all(b == pytest.approx(bases[0], rel=1e-9) for b in bases)


def test_drop_path_on_a_backbone_without_our_blocks_is_one_line():
    from selfsup.methods.vit_student import encode as enc

    class NotOurViT(torch.nn.Module):
        def forward_tokens(self, x, **kw):
            return x

    with pytest.raises(ConfigError, match="drop_path_rate"):
        enc(NotOurViT(), torch.zeros(2, 3, 4, 4), drop_rates=[0.1])
