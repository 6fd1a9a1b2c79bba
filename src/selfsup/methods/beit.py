"""BEiT (Bao et al. 2021, "BERT Pre-Training of Image Transformers").

Block-wise masking of ~40% of the patches; masked patch embeddings are replaced by a learned mask token, the
ViT encodes the whole sequence, and a linear head predicts, at masked positions only, the discrete token id a
frozen tokenizer gives each patch (cross-entropy). The tokenizer is a VQ-VAE trained in this project:
``selfsup pretrain --method tokenizer`` (see :mod:`selfsup.methods.tokenizer`), passed as
``method.tokenizer=<run dir or checkpoint>``. ``method.tokenizer=random`` gives a randomly initialised frozen
tokenizer: for tests only (its ids carry little meaning).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..augment.masking import block_masking
from ..checkpoints import check_checkpoint, load_checkpoint, load_run_checkpoint
from ..components.base import StepContext
from ..components.gather import global_rows, rank_rows
from ..components.tokenizer import VQTokenizer
from ..config_checks import DIM_CAP, checked
from ..errors import CheckpointError, ConfigError
from ..losses.masked import masked_cross_entropy
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mae import require_vit

if TYPE_CHECKING:
    from ..backbones.timm_vit import TimmViT
    from ..backbones.vit import ViT

HOW_TO_TRAIN = ("train one first: `selfsup pretrain --method tokenizer --data <same data> --backbone <same ViT> "
                "--out runs/tokenizer`, then pass --set method.tokenizer=runs/tokenizer")


def load_tokenizer(spec: str, *, in_channels: int, patch_size: int) -> VQTokenizer:
    """A frozen tokenizer from a tokenizer run directory or checkpoint file (or ``"random"``, for tests)."""
    if spec == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tok = VQTokenizer(in_channels, patch_size, codebook_size=64, code_dim=16, hidden=16)
    else:
        path = Path(spec)
        if not path.exists():
            raise ConfigError(f"method.tokenizer: {path} does not exist; {HOW_TO_TRAIN}")
        try:
            ckpt = load_run_checkpoint(path)[1] if path.is_dir() else check_checkpoint(load_checkpoint(path), path)
        except CheckpointError as e:
            raise ConfigError(f"method.tokenizer: {e}") from None
        name = ckpt.get("method_name")
        if name != "tokenizer":
            raise ConfigError(f"method.tokenizer: {path} is a '{name}' run, not a tokenizer run; {HOW_TO_TRAIN}")
        sd = {k[len("backbone."):]: v for k, v in ckpt["method"].items() if k.startswith("backbone.")}
        try:
            tok = VQTokenizer.from_state_dict(sd)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise ConfigError(f"method.tokenizer: {path} does not hold a usable tokenizer ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if tok.patch_size != patch_size or tok.in_channels != in_channels:
        raise ConfigError(f"method.tokenizer: {spec} has patch size {tok.patch_size} and {tok.in_channels} channels "
                          f"but the ViT has patch size {patch_size} and {in_channels} channels; train the tokenizer "
                          "with the same --backbone/--set backbone.patch_size and data")
    for p in tok.parameters():
        p.requires_grad_(False)
    return tok.eval()


@dataclass
class BEiTConfig(MethodConfig):
    tokenizer: str | None = None  # run dir or checkpoint of `--method tokenizer`; "random": tests only
    mask_ratio: float = checked(0.4, gt=0, lt=1)
    # smallest masked block (BEiT: 16 on a 14x14 grid; 4 suits an 8x8 grid)
    min_block_patches: int = checked(4, ge=1, cap=DIM_CAP)


@register_method("beit", help="BEiT: predict a trained VQ tokenizer's ids of block-masked patches (Bao et al. 2021)")
class BEiT(Method):
    Config = BEiTConfig
    cfg: BEiTConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1.875e-4  # BEiT: 1.5e-3 at batch 2048, AdamW (0.9, 0.999), weight decay 0.05
    default_weight_decay = 0.05
    test_backbone = "vit-test"
    test_overrides = {"tokenizer": "random"}

    def __init__(self, backbone, cfg: BEiTConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, "beit")
        if not self.cfg.tokenizer:
            raise ConfigError(f"beit needs method.tokenizer=<tokenizer run dir or checkpoint>; {HOW_TO_TRAIN}")
        self.tokenizer = load_tokenizer(self.cfg.tokenizer, in_channels=backbone.in_channels,
                                        patch_size=backbone.patch_size)
        d = backbone.num_features
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, self.tokenizer.codebook_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> "BEiT":
        super().train(mode)
        self.tokenizer.eval()  # frozen: never in training mode (its usage counters stay put)
        return self

    def target_ids(self, x: torch.Tensor) -> torch.Tensor:
        """The tokenizer's ids (B, N) in raster order."""
        return self.tokenizer.encode(x.float()).flatten(1)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        bb = cast("ViT | TimmViT", self.backbone)  # require_vit checked it in __init__
        grid = bb.grid_for(x)
        # masks drawn for the global batch, this rank's rows kept (components/gather.py: splittable randomness)
        mask = rank_rows(block_masking(global_rows(x.shape[0]), grid, self.cfg.mask_ratio,
                                       min_patches=self.cfg.min_block_patches, device=x.device), x.shape[0])
        target = self.target_ids(x)
        tokens = bb.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        logits = self.head(tokens[:, 1:])  # (B, N, V); only masked rows enter the loss
        loss = masked_cross_entropy(logits, target, mask)
        acc = (logits[mask].argmax(-1) == target[mask]).float().mean()
        return MethodOutput(loss=loss, logs={"mim_acc": acc.detach()}, embedding=tokens[:, 0].detach())
