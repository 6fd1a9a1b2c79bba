"""A small VQ-VAE image tokenizer (van den Oord et al. 2017) for BEiT's discrete visual tokens.

BEiT (Bao et al. 2021) predicts the ids a pretrained dVAE assigns to each patch. No pretrained tokenizer can be
downloaded here, so this one is trained in the project (``selfsup pretrain --method tokenizer``) on the same
unlabelled images. One code per ``p×p`` patch: the encoder downsamples by exactly the ViT's patch size.

Design choices against codebook collapse (the usual VQ-VAE failure on small data): codes and encoder outputs are
l2-normalised and matched by cosine similarity (as in ViT-VQGAN / BEiT v2), and codes unused for ``dead_after``
training steps are restarted from random encoder outputs of the current batch (and all codes start on
encoder outputs of the first training batch). Usage is reported as the
perplexity of the batch's code histogram (``exp`` of its entropy; K means all K codes equally used) and the
number of dead codes.

The module is also a :class:`Backbone` (pooled = mean of the normalised encoder outputs), so a tokenizer run
can be evaluated like any other, and its hyper-parameters are readable from its ``state_dict`` alone
(:meth:`VQTokenizer.from_state_dict`), which is how BEiT reloads it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from .gather import all_reduce_sum_, gather_no_grad


class VQTokenizer(Backbone):
    """Images (B, C, H, W) → code ids (B, H/p, W/p) and back; see the module docstring."""
    patch_size_t: torch.Tensor
    step: torch.Tensor
    last_used: torch.Tensor
    initialized: torch.Tensor

    stage_names = ("codes",)

    def __init__(self, in_channels: int = 3, patch_size: int = 4, codebook_size: int = 512, code_dim: int = 32,
                 hidden: int = 64, dead_after: int = 50) -> None:
        super().__init__()
        if patch_size < 1 or codebook_size < 2 or code_dim < 1 or hidden < 1:
            raise ValueError("tokenizer sizes must be positive and codebook_size >= 2")
        self.in_channels = in_channels
        self.num_features = code_dim
        self.dead_after = dead_after
        p = patch_size
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, p, p), nn.ReLU(inplace=True),  # one cell per patch
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True),  # context from neighbouring patches
            nn.Conv2d(hidden, code_dim, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(hidden, hidden, p, p), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, in_channels, 3, 1, 1))
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, code_dim), dim=1))
        self.register_buffer("patch_size_t", torch.tensor(p))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def patch_size(self) -> int:
        return int(self.patch_size_t)

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "VQTokenizer":
        """Rebuild a tokenizer with the sizes its weights imply, then load them."""
        hidden, in_ch = sd["encoder.0.weight"].shape[:2]
        k, d = sd["codebook"].shape
        tok = cls(in_channels=int(in_ch), patch_size=int(sd["patch_size_t"]), codebook_size=int(k), code_dim=int(d),
                  hidden=int(hidden))
        tok.load_state_dict(sd)
        return tok

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised encoder outputs (B, gh, gw, d)."""
        self.check_input(x)
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the tokenizer's patch size {p}")
        return F.normalize(self.encoder(x).permute(0, 2, 3, 1), dim=-1)

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ F.normalize(self.codebook, dim=1).t()).argmax(dim=-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, H/p, W/p), long. Never changes the tokenizer's state."""
        return self._nearest(self._encode(x).float())

    @torch.no_grad()
    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) reconstructed from ids (B, gh, gw)."""
        q = F.normalize(self.codebook, dim=1)[ids]
        return self._decode(q)

    def _decode(self, q: torch.Tensor) -> torch.Tensor:
        """Unit code vectors (B, gh, gw, d) → images; scaled by √d so each channel has unit scale."""
        return self.decoder(q.permute(0, 3, 1, 2) * q.shape[-1] ** 0.5)

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor) -> None:
        if not bool(self.initialized):  # data-dependent init: codes start on the first batch's encoder outputs
            self.initialized.fill_(True)
            dead = torch.ones_like(self.last_used, dtype=torch.bool)
        else:
            dead = (self.step - self.last_used) > self.dead_after
        n = int(dead.sum())
        if n == 0:
            return
        flat = gather_no_grad(z.reshape(-1, z.shape[-1]))  # every rank restarts from the same global pool
        pick = torch.randint(0, flat.shape[0], (n,), device=z.device)
        self.codebook.data[dead] = flat[pick].to(self.codebook.dtype)
        self.last_used[dead] = self.step

    def quantize_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training pass: reconstruction (B, C, H, W), VQ losses and usage statistics."""
        z = self._encode(x)
        if self.training:
            self._restart_dead(z.detach())  # before the codebook enters this step's graph
        codes = F.normalize(self.codebook, dim=1)
        ids = (z.detach() @ codes.t()).argmax(dim=-1)  # (B, gh, gw)
        q = codes[ids]
        codebook_loss = F.mse_loss(q, z.detach())  # move codes towards encoder outputs
        commit_loss = F.mse_loss(z, q.detach())  # keep encoder outputs near their codes
        z_st = z + (q - z).detach()  # straight-through estimator
        recon = self._decode(z_st)
        counts = all_reduce_sum_(torch.bincount(ids.flatten(), minlength=self.codebook_size).float())
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        if self.training:
            self.last_used[counts > 0] = self.step
            self.step += 1
        dead = ((self.step - self.last_used) > self.dead_after).sum()
        return {"recon": recon, "ids": ids, "codebook_loss": codebook_loss, "commit_loss": commit_loss,
                "perplexity": perplexity, "dead_codes": dead.float(), "codes_used": (counts > 0).sum().float()}

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self._encode(x)
        return {"codes": z.permute(0, 3, 1, 2), "pooled": z.mean(dim=(1, 2))}
