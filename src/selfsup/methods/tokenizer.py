"""``tokenizer``: train the VQ-VAE that BEiT's targets come from (see :mod:`selfsup.components.tokenizer`).

``selfsup pretrain --method tokenizer --backbone vit-tiny --data cifar10 --out runs/tok`` trains it on the same
unlabelled images BEiT will see; ``--method beit --set method.tokenizer=runs/tok`` then uses it. The backbone
flag only fixes the patch size (the ViT's, so that there is one token per patch); the tokenizer replaces it as
the run's backbone. Logs: ``recon`` (MSE), ``perplexity`` and ``dead_codes`` of the codebook.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..components.base import StepContext
from ..components.tokenizer import VQTokenizer
from ..errors import ConfigError
from .base import Method, MethodOutput, ViewBatch, register_method


@dataclass
class TokenizerConfig:
    codebook_size: int = 512
    code_dim: int = 32
    hidden_dim: int = 64
    patch_size: int | None = None  # None: the backbone's patch size (a ViT's), else 4
    commitment: float = 0.25  # β in the VQ-VAE loss
    dead_after: int = 50  # restart codes unused for this many steps

    def validate(self) -> None:
        if self.codebook_size < 2:
            raise ConfigError(f"method.codebook_size must be >= 2, got {self.codebook_size}")
        for key in ("code_dim", "hidden_dim", "dead_after"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ConfigError(f"method.patch_size must be >= 1, got {self.patch_size}")
        if self.commitment < 0:
            raise ConfigError(f"method.commitment must be >= 0, got {self.commitment}")


@register_method("tokenizer", help="VQ-VAE visual tokenizer for BEiT (van den Oord et al. 2017), trained here")
class Tokenizer(Method):
    """loss = ||x − x̂||² + ||sg[z] − e||² + β·||z − sg[e]||² (reconstruction of the normalised view)."""

    Config = TokenizerConfig
    default_augment = "crop-flip"
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
        return self.backbone

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        out = self.tokenizer.quantize_train(x)
        recon = F.mse_loss(out["recon"].float(), x.float())
        loss = recon + out["codebook_loss"] + self.cfg.commitment * out["commit_loss"]
        logs = {k: out[k].detach() for k in ("perplexity", "dead_codes", "codes_used")}
        logs["recon"] = recon.detach()
        return MethodOutput(loss=loss, logs=logs)
