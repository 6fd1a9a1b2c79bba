"""Every loss computes in float32 under bf16 autocast: value and gradients equal the fp32 ones.

``.float()`` on the inputs is not enough (a matmul of float32 tensors still runs in bf16 under autocast); the
losses are wrapped with :func:`selfsup.losses.precision.fp32_loss`. The table below must name every public
function of ``selfsup.losses`` (a new loss without an entry fails :func:`test_every_public_loss_is_covered`).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil

import pytest
import torch
import torch.nn.functional as F

import selfsup.losses
from selfsup.losses import (
    clustering,
    contrastive,
    contrastive_variants,
    covariance_contrast,
    distill_vit,
    distillation,
    local,
    masked,
    metric,
    predictive,
    pretext,
    redundancy,
    statistical,
)
from selfsup.methods.moco_v3 import ctr_loss
from selfsup.methods.npid import BankLoss

NOT_LOSSES = {"check_temperature", "check_margin", "cpc_positive_index", "fp32_loss"}


def _g(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(_g(*shape, seed=seed), dim=-1)


def _probs(*shape: int, seed: int) -> torch.Tensor:
    return torch.softmax(_g(*shape, seed=seed), dim=-1)


def _mask(*shape: int, seed: int) -> torch.Tensor:
    m = _g(*shape, seed=seed) > 0
    m.view(-1)[0] = True
    return m


def _vit_mask() -> torch.Tensor:
    """(3, 5) with 4 masked patches (image 2 has none), matching the (4, K) rows of the patch-loss cases."""
    m = torch.zeros(3, 5, dtype=torch.bool)
    m[0, [0, 2, 4]] = True
    m[1, 3] = True
    return m


def _key_mask() -> torch.Tensor:
    """(8, 24): random keys masked, never the positive (column 2i of row i)."""
    m = _mask(8, 24, seed=2)
    m[torch.arange(8), torch.arange(8) * 2] = False
    return m


_bank = BankLoss("nce", 0.07)
_bank.log_norm.fill_(2.0)

# name → (function, args builder); float tensors are leaves whose gradients are compared
CASES = {
    "contrastive.info_nce": (contrastive.info_nce, lambda: (_unit(8, 32, seed=0), _unit(24, 32, seed=1),
                                                            torch.arange(8) * 2, 0.1, _key_mask())),
    "contrastive.info_nce[bank]": (contrastive.info_nce, lambda: (_unit(8, 32, seed=0), _unit(8, 6, 32, seed=1),
                                                                  torch.zeros(8, dtype=torch.long), 0.07)),
    "contrastive.nt_xent": (contrastive.nt_xent, lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1), 0.5)),
    "contrastive.nce_loss": (contrastive.nce_loss, lambda: (_g(8, seed=0) * 3, _g(8, 5, seed=1) * 3, 1.3)),
    "contrastive.nce_log_norm": (contrastive.nce_log_norm, lambda: (_g(8, 5, seed=1) * 3,)),
    "redundancy.cross_correlation": (redundancy.cross_correlation, lambda: (_g(16, 24, seed=0), _g(16, 24, seed=1))),
    "redundancy.barlow_twins_loss": (redundancy.barlow_twins_loss, lambda: (_g(16, 24, seed=0), _g(16, 24, seed=1))),
    "redundancy.invariance_loss": (redundancy.invariance_loss, lambda: (_g(16, 24, seed=0), _g(16, 24, seed=1))),
    "redundancy.variance_loss": (redundancy.variance_loss, lambda: (_g(16, 24, seed=0) * 0.7,)),
    "redundancy.covariance_loss": (redundancy.covariance_loss, lambda: (_g(16, 24, seed=0),)),
    "redundancy.vicreg_loss": (redundancy.vicreg_loss, lambda: (_g(16, 24, seed=0), _g(16, 24, seed=1))),
    # VIbCReg, VICRegL, DeepCluster-v2, SMoG
    "redundancy.decorrelation_loss": (redundancy.decorrelation_loss, lambda: (_g(16, 24, seed=0),)),
    "redundancy.vibcreg_loss": (redundancy.vibcreg_loss, lambda: (_g(16, 24, seed=0), _g(16, 24, seed=1))),
    "clustering.deepcluster_v2_loss": (clustering.deepcluster_v2_loss,
                                       lambda: (_unit(2, 3, 8, 40, seed=0), torch.arange(16).view(2, 8) % 40, 0.1)),
    "clustering.group_contrastive_loss": (clustering.group_contrastive_loss,
                                          lambda: (_g(8, 32, seed=0), _g(40, 32, seed=1), torch.arange(8) * 3, 0.1)),
    "local.vicreg_terms": (local.vicreg_terms, lambda: (_g(16, 24, seed=0), _g(16, 24, seed=1))),
    "local.vicregl_local_loss": (local.vicregl_local_loss, lambda: (_g(4, 9, 24, seed=0), _g(4, 9, 24, seed=1),
                                                                    _g(4, 9, 2, seed=2).sigmoid(), _g(4, 9, 2, seed=3).sigmoid(), 4)),
    "distillation.normalized_mse": (distillation.normalized_mse, lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1))),
    "distillation.negative_cosine": (distillation.negative_cosine, lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1))),
    "distillation.cross_view_cross_entropy": (distillation.cross_view_cross_entropy,
                                              lambda: (_g(4, 8, 40, seed=0), _probs(2, 8, 40, seed=1), 0.1)),
    "distillation.dino_loss": (distillation.dino_loss, lambda: (_g(4, 8, 40, seed=0), _g(2, 8, 40, seed=1),
                                                                _g(40, seed=2) * 0.1, 0.1, 0.04)),
    "clustering.swapped_prediction": (clustering.swapped_prediction,
                                      lambda: (_unit(3, 8, 40, seed=0), _probs(2, 8, 40, seed=1), 0.1)),
    "masked.normalize_patches": (masked.normalize_patches, lambda: (_g(2, 6, 48, seed=0),)),
    "masked.masked_mse": (masked.masked_mse, lambda: (_g(2, 6, 48, seed=0), _g(2, 6, 48, seed=1),
                                                      _mask(2, 6, seed=2))),
    "masked.masked_cross_entropy": (masked.masked_cross_entropy, lambda: (_g(2, 6, 40, seed=0),
                                                                          torch.arange(12).view(2, 6) % 40,
                                                                          _mask(2, 6, seed=2))),
    # SimMIM, data2vec (MaskFeat uses masked_mse)
    "masked.masked_l1": (masked.masked_l1, lambda: (_g(2, 6, 48, seed=0), _g(2, 6, 48, seed=1), _mask(2, 6, seed=2))),
    "masked.masked_smooth_l1": (masked.masked_smooth_l1, lambda: (_g(2, 6, 32, seed=0) * 2, _g(2, 6, 32, seed=1),
                                                                  _mask(2, 6, seed=2), 2.0)),
    "masked.masked_smooth_l1[l2]": (masked.masked_smooth_l1, lambda: (_g(2, 6, 32, seed=0), _g(2, 6, 32, seed=1),
                                                                      _mask(2, 6, seed=2), 0.0)),
    "masked.layer_average_targets": (masked.layer_average_targets, lambda: (_g(3, 2, 6, 32, seed=0) * 2 + 1,)),
    "masked.layer_average_targets[final]": (masked.layer_average_targets,
                                            lambda: (_g(3, 2, 6, 32, seed=0) * 2 + 1, False, True)),
    "metric.margin_contrastive_loss": (metric.margin_contrastive_loss, lambda: (_g(8, 32, seed=0) * 0.2,
                                                                                _g(8, 32, seed=1) * 0.2)),
    "metric.triplet_loss[all]": (metric.triplet_loss, lambda: (_unit(8, 32, seed=0), _unit(8, 32, seed=1), 1.5, "all")),
    "metric.triplet_loss[batch-hard]": (metric.triplet_loss, lambda: (_unit(8, 32, seed=0), _unit(8, 32, seed=1), 1.5,
                                                                      "batch-hard")),
    "metric.triplet_loss": (metric.triplet_loss, lambda: (_unit(8, 32, seed=0), _unit(8, 32, seed=1), 0.5)),
    "metric.npair_loss": (metric.npair_loss, lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1))),
    "pretext.masked_mse": (pretext.masked_mse, lambda: (_g(2, 3, 8, 8, seed=0), _g(2, 3, 8, 8, seed=1),
                                                        _mask(2, 1, 8, 8, seed=2).float())),
    "pretext.soft_cross_entropy": (pretext.soft_cross_entropy, lambda: (_g(16, 40, seed=0), _probs(16, 40, seed=1),
                                                                        _g(40, seed=2).exp())),
    "pretext.cpc_info_nce": (pretext.cpc_info_nce, lambda: (_g(2, 2, 3, 32, seed=0), _g(2, 3, 3, 32, seed=1), 1)),
    "pretext.gan_losses": (pretext.gan_losses, lambda: (_g(8, 1, seed=0), _g(8, 1, seed=1), _g(8, 1, seed=2))),
    # statistical / coding-rate objectives (MMCR, EMP-SSL, W-MSE, LeJEPA)
    "statistical.mmcr_loss": (statistical.mmcr_loss, lambda: (_g(4, 8, 16, seed=0), 0.1)),
    "statistical.mmcr_loss[momentum]": (statistical.mmcr_loss, lambda: (_g(4, 8, 16, seed=0), 0.0,
                                                                        _g(4, 8, 16, seed=1))),
    "statistical.total_coding_rate": (statistical.total_coding_rate, lambda: (_unit(3, 16, 24, seed=0), 0.2)),
    "statistical.patch_invariance": (statistical.patch_invariance, lambda: (_g(5, 8, 16, seed=0),)),
    "statistical.whiten": (statistical.whiten, lambda: (_g(24, 6, seed=0),)),
    "statistical.wmse_loss": (statistical.wmse_loss, lambda: (_g(3, 24, 6, seed=0),
                                                              torch.stack([torch.randperm(24, generator=torch.Generator()
                                                                                          .manual_seed(s))
                                                                           for s in (1, 2)]), 12)),
    "statistical.epps_pulley": (statistical.epps_pulley, lambda: (_g(32, 6, seed=0),)),
    "statistical.sigreg": (statistical.sigreg, lambda: (_g(3, 32, 8, seed=0), _unit(12, 8, seed=1).T.contiguous())),
    "statistical.lejepa_prediction": (statistical.lejepa_prediction, lambda: (_g(5, 8, 16, seed=0), 2)),
    # DCL / DCLW, SupCon, TiCo
    "contrastive_variants.vmf_weights": (contrastive_variants.vmf_weights,
                                         lambda: (_unit(8, 32, seed=0), _unit(8, 32, seed=1), 0.5)),
    "contrastive_variants.dcl_loss": (contrastive_variants.dcl_loss, lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1),
                                                                              0.1)),
    "contrastive_variants.dcl_loss[dclw]": (contrastive_variants.dcl_loss,
                                            lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1), 0.1, 0.5)),
    "contrastive_variants.supcon_loss": (contrastive_variants.supcon_loss,
                                         lambda: (_g(2, 8, 32, seed=0), torch.arange(8) % 3, 0.1)),
    "covariance_contrast.tico_loss": (covariance_contrast.tico_loss,
                                      lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1), _g(32, 32, seed=2) * 0.05,
                                               0.9, 8.0)),
    # NNCLR, FastSiam, ReSSL
    "contrastive.nnclr_loss": (contrastive.nnclr_loss, lambda: (_unit(8, 32, seed=0), _unit(8, 32, seed=1),
                                                                _g(8, 32, seed=2), _g(8, 32, seed=3), 0.1)),
    "distillation.mean_target_negative_cosine": (distillation.mean_target_negative_cosine,
                                                 lambda: (_g(4, 8, 32, seed=0), _g(4, 8, 32, seed=1))),
    "distillation.relational_loss": (distillation.relational_loss,
                                     lambda: (_unit(8, 32, seed=0), _unit(8, 32, seed=1), _unit(24, 32, seed=2),
                                              0.1, 0.04, _mask(24, seed=3) & (torch.arange(24) > 0))),
    # I-JEPA, AIM
    "predictive.jepa_loss": (predictive.jepa_loss, lambda: (_g(2, 3, 5, 16, seed=0) * 2, _g(2, 3, 5, 16, seed=1))),
    "predictive.jepa_loss[l2]": (predictive.jepa_loss, lambda: (_g(2, 3, 5, 16, seed=0), _g(2, 3, 5, 16, seed=1),
                                                                "l2")),
    "predictive.next_patch_mse": (predictive.next_patch_mse, lambda: (_g(2, 6, 48, seed=0), _g(2, 6, 48, seed=1),
                                                                      torch.tensor([1, 4]))),
    # iBOT, DINOv2, MSN, PMSN
    "distill_vit.masked_patch_distillation": (distill_vit.masked_patch_distillation,
                                              lambda: (_g(4, 40, seed=0), _probs(4, 40, seed=1), _vit_mask(), 0.1)),
    "distill_vit.ibot_patch_loss": (distill_vit.ibot_patch_loss,
                                    lambda: (_g(4, 40, seed=0), _g(4, 40, seed=1), _g(40, seed=2) * 0.1, _vit_mask(),
                                             0.1, 0.04)),
    "distill_vit.koleo_loss": (distill_vit.koleo_loss, lambda: (_g(8, 16, seed=0),)),
    "distill_vit.anchor_target_cross_entropy": (distill_vit.anchor_target_cross_entropy,
                                                lambda: (_unit(3, 8, 40, seed=0), _probs(8, 40, seed=1), 0.1)),
    "distill_vit.prior_kl": (distill_vit.prior_kl, lambda: (_probs(40, seed=0),)),
    "distill_vit.prior_kl[power-law, ranked]": (functools.partial(distill_vit.prior_kl, ranked=True),
                                                lambda: (_probs(40, seed=0), _probs(40, seed=1))),
    # the loss computations that live in method files
    "moco_v3.ctr_loss": (ctr_loss, lambda: (_g(8, 32, seed=0), _g(8, 32, seed=1), 0.2)),
    "npid.BankLoss": (_bank, lambda: (_g(8, 32, seed=0), _unit(8, 6, 32, seed=1))),
}


def _public_losses() -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(selfsup.losses.__path__):
        mod = importlib.import_module(f"selfsup.losses.{info.name}")
        for name, obj in vars(mod).items():
            if (inspect.isfunction(obj) and obj.__module__ == mod.__name__ and not name.startswith("_")
                    and name not in NOT_LOSSES):
                names.add(f"{info.name}.{name}")
    return names


def test_every_public_loss_is_covered():
    public = _public_losses()
    assert public, "no losses found"
    assert public <= {k.split("[")[0] for k in CASES}, f"no precision case for {sorted(public - set(CASES))}"
    for name in public:
        assert getattr(CASES[name][0], "__fp32_loss__", False), f"{name} is not wrapped with fp32_loss"


def _run(fn, build, autocast: bool):
    args = [a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in build()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*args)
    outs = list(out) if isinstance(out, tuple) else [out]
    weights = [_g(*o.shape, seed=9) if o.ndim else torch.ones(()) for o in outs]
    total = sum((o * w).sum() for o, w in zip(outs, weights) if o.requires_grad)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(total, leaves, allow_unused=True) if torch.is_tensor(total) else [None] * len(leaves)
    return outs, grads


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_under_bf16_autocast_equals_fp32(name):
    fn, build = CASES[name]
    ref_outs, ref_grads = _run(fn, build, autocast=False)
    outs, grads = _run(fn, build, autocast=True)
    for o, r in zip(outs, ref_outs):
        assert o.dtype == r.dtype == torch.float32
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-7)
    assert any(g is not None for g in ref_grads) or not any(r.requires_grad for r in ref_outs)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


def test_low_precision_inputs_are_computed_in_float32():
    """bf16 tensors (what a model under autocast hands the loss) are cast up, and the gradient comes back in bf16."""
    z1, z2 = _g(16, 24, seed=0).bfloat16().requires_grad_(), _g(16, 24, seed=1).bfloat16().requires_grad_()
    loss = redundancy.barlow_twins_loss(z1, z2)
    ref = redundancy.barlow_twins_loss(z1.detach().float(), z2.detach().float())
    assert loss.dtype == torch.float32 and torch.equal(loss.detach(), ref)
    loss.backward()
    assert z1.grad.dtype == torch.bfloat16
