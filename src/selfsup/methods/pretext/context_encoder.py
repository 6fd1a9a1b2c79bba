"""Context encoders (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting").

A region of each view is removed (filled with 0, the dataset mean after normalisation): the central square
(``mask=center``, side ``mask_fraction`` of the image, 1/4 of its area by default) or ``num_blocks`` random squares
of half that side (``random-blocks``, at most the same area). The backbone encodes the masked image, a
convolutional decoder reconstructs the image, and the loss is

    recon_weight · L2 on the removed region  +  adv_weight · adversarial    (0.999 / 0.001, as the paper)

The adversarial part uses a small discriminator on the completed image (real pixels outside the hole, predicted
ones inside). **One loss, one optimizer:** the discriminator is trained by adding its own loss to the returned
loss, and the generator's adversarial term is computed with the discriminator's parameters *detached*
(``torch.func.functional_call``), while the discriminator's loss sees the prediction detached. So the
discriminator's parameters receive only the discriminator-loss gradient and the encoder/decoder only the
reconstruction and generator gradients: simultaneous gradient descent on both players, in one backward, with
the engine's optimizer (and its learning-rate schedule) for both. ``disc_weight`` scales the discriminator's loss
(its effective learning rate); ``adv_weight=0`` skips the discriminator entirely.

Evaluation: the backbone takes whole (unmasked) images with the data's channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from ...components.base import StepContext
from ...components.gather import global_rows, local_share, rank_rows
from ...config_checks import DIM_CAP, checked, dim
from ...heads.pretext_decoders import ConvDecoder, Discriminator, last_stage_map
from ...losses.pretext import gan_losses, masked_mse
from ..base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


def region_mask(b: int, h: int, w: int, kind: str, fraction: float, num_blocks: int, device,
                gen: torch.Generator | None = None) -> torch.Tensor:
    """Mask ``(B, 1, H, W)`` float, 1 on removed pixels.

    ``center``: the central square of side ``round(fraction · min(H, W))``; ``random-blocks``: ``num_blocks``
    squares of side ``round(fraction · min(H, W) / 2)`` at uniform random positions (they may overlap).
    """
    m = torch.zeros(b, 1, h, w, device=device)
    if kind == "center":
        s = max(1, round(fraction * min(h, w)))
        t, l = (h - s) // 2, (w - s) // 2
        m[:, :, t : t + s, l : l + s] = 1
        return m
    s = max(1, round(fraction * min(h, w) / 2))
    dev = gen.device if gen is not None else device
    # positions drawn for the global batch under torchrun, this rank's rows kept (components/gather.py)
    tops = rank_rows(torch.randint(0, h - s + 1, (global_rows(b), num_blocks), generator=gen, device=dev), b)
    lefts = rank_rows(torch.randint(0, w - s + 1, (global_rows(b), num_blocks), generator=gen, device=dev), b)
    tops, lefts = tops.to(device), lefts.to(device)
    rows = torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w)
    inside = ((rows >= tops[..., None, None]) & (rows < tops[..., None, None] + s)
              & (cols >= lefts[..., None, None]) & (cols < lefts[..., None, None] + s))  # (B, K, H, W)
    return inside.any(dim=1, keepdim=True).float()


@dataclass
class ContextEncoderConfig(MethodConfig):
    mask: str = checked("center", choices=("center", "random-blocks"))
    # side of the central square relative to the image (0.5 = 1/4 of the area)
    mask_fraction: float = checked(0.5, gt=0, lt=1)
    num_blocks: int = checked(4, ge=1, cap=DIM_CAP)  # random-blocks: squares of side mask_fraction/2
    recon_weight: float = checked(0.999, ge=0)
    adv_weight: float = checked(0.001, ge=0)
    disc_weight: float = checked(1.0, ge=0)  # weight of the discriminator's own loss in the summed objective
    disc_width: int = dim(32)
    decoder_width: int = dim(64)
    # 2x upsamplings from the backbone's last stage (4x4 → 32 px for a CIFAR ResNet)
    decoder_blocks: int = checked(3, ge=0, cap=16)


@register_method("context-encoder", help="inpaint a removed region, L2 + adversarial (Pathak et al. 2016)")
class ContextEncoder(Method):
    Config = ContextEncoderConfig
    cfg: ContextEncoderConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1e-3
    default_weight_decay = 1e-4
    test_overrides = {"decoder_width": 16, "decoder_blocks": 3, "disc_width": 8}

    def __init__(self, backbone, cfg: ContextEncoderConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        ch = backbone.in_channels
        self.decoder = ConvDecoder(backbone.num_features, ch, c.decoder_width, c.decoder_blocks)
        self.discriminator = Discriminator(ch, c.disc_width)

    def losses(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction ``pred`` (B, C, H, W) of ``x`` with ``mask`` (B, 1, H, W) removed, and the loss terms."""
        c = self.cfg
        pred = self.decoder(last_stage_map(self.backbone, x * (1 - mask)), tuple(x.shape[-2:]))
        # masked pixels per sample vary (random blocks overlap): weight by this rank's share of the global count
        recon = masked_mse(pred.float(), x.float(), mask) * local_share(mask.sum() * x.shape[1])
        out = {"pred": pred, "recon": recon, "loss": c.recon_weight * recon}
        if c.adv_weight > 0:
            fake = x * (1 - mask) + pred * mask  # the completed image
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            d_loss, g_loss = gan_losses(self.discriminator(x), self.discriminator(fake.detach()),
                                        functional_call(self.discriminator, frozen, (fake,)))
            out.update(adv=g_loss, disc=d_loss, loss=out["loss"] + c.adv_weight * g_loss + c.disc_weight * d_loss)
        return out

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        c = self.cfg
        mask = region_mask(x.shape[0], x.shape[-2], x.shape[-1], c.mask, c.mask_fraction, c.num_blocks, x.device)
        out = self.losses(x, mask)
        logs: dict[str, torch.Tensor] = {k: out[k].detach() for k in ("recon", "adv", "disc") if k in out}
        return MethodOutput(loss=out["loss"], logs=logs)
