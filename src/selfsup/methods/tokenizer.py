"""``tokenizer``: train the VQ-VAE that BEiT's targets come from (see :mod:`selfsup.components.tokenizer`).

``selfsup pretrain --method tokenizer --backbone vit-tiny --data cifar10 --out runs/tok`` trains it on the same
unlabelled images BEiT will see; ``--method beit --set method.tokenizer=runs/tok`` then uses it. The backbone
flag only fixes the patch size (the ViT's, so that there is one token per patch); the tokenizer replaces it as
the run's backbone. Logs: ``recon`` (MSE), ``perplexity`` and ``dead_codes`` of the codebook.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import torch.nn.functional as F

from ..components.base import StepContext
from ..components.tokenizer import VQTokenizer
from ..config_checks import COUNT_CAP, IMAGE_CAP, checked, dim
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class TokenizerConfig(MethodConfig):
    codebook_size: int = dim(512, ge=2)
    code_dim: int = dim(32)
    hidden_dim: int = dim(64)
    patch_size: int | None = checked(None, ge=1, cap=IMAGE_CAP)  # None: the backbone's patch size (a ViT's), else 4
    commitment: float = checked(0.25, ge=0)  # β in the VQ-VAE loss
    dead_after: int = checked(50, ge=1, cap=COUNT_CAP)  # restart codes unused for this many steps


@register_method("tokenizer", help="VQ-VAE visual tokenizer for BEiT (van den Oord et al. 2017), trained here")
class Tokenizer(Method):
    """loss = ||x − x̂||² + ||sg[z] − e||² + β·||z − sg[e]||² (reconstruction of the normalised view)."""

    Config = TokenizerConfig
    cfg: TokenizerConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1e-3
    default_weight_decay = 1e-4
    test_overrides = {"codebook_size": 16, "code_dim": 8, "hidden_dim": 16}

    def __init__(self, backbone, cfg: TokenizerConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        p = c.patch_size or getattr(backbone, "patch_size", None) or 4
        self.backbone = VQTokenizer(backbone.in_channels, p, c.codebook_size, c.code_dim, c.hidden_dim,
                                    c.dead_after)

    @property
    def tokenizer(self) -> VQTokenizer:
        return typing.cast(VQTokenizer, self.backbone)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        out = self.tokenizer.quantize_train(x)
        recon = F.mse_loss(out["recon"].float(), x.float())
        loss = recon + out["codebook_loss"] + self.cfg.commitment * out["commit_loss"]
        logs = {k: out[k].detach() for k in ("perplexity", "dead_codes", "codes_used")}
        logs["recon"] = recon.detach()
        return MethodOutput(loss=loss, logs=logs)
