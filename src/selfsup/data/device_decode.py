"""JPEG decoding where the model runs: shard members travel as their encoded bytes and are decoded on the device.

With ``data.decode=device`` a shard folder's DataLoader workers only read each member's bytes (a seek and a
read); the training loop's batches are decoded on the device by :func:`decode_batch`: ``torchvision.io.decode_jpeg``
on the whole list at once (nvJPEG on a CUDA device, libjpeg-turbo on the CPU), then the centred square of each
image resized to ``size`` (bilinear, antialiased), stacked into the uint8 batch the view pipeline takes. The
decode is queued on the device like the step's own work, so the workers' CPU time is the reading alone.

Members that are not JPEG (PNG, WebP ...) are decoded by PIL in the main process, exactly as the workers would
(data/folder.py ``decode_bytes``). When the batched decode fails, each JPEG is decoded alone, by PIL when
torchvision cannot; one that neither reads is skipped with a count: the batch is then short, as a batch of a
streaming folder with an unreadable file is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() >= 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


def square_resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (C, H, W) → uint8 (C, size, size): the centred square, resized (bilinear, antialiased)."""
    _, h, w = img.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    sq = img[:, top : top + side, left : left + side]
    if side == size:
        return sq.contiguous()
    out = F.interpolate(sq[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def _decode_one(data: torch.Tensor, size: int, channels: int, device: torch.device) -> torch.Tensor | None:
    """One member: ``decode_jpeg`` on ``device`` when it is a JPEG, else (or when that fails: a JPEG variant
    torchvision does not read) PIL in this process, as the workers would; None when neither reads it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from .folder import BadImage, decode_bytes

    if is_jpeg(data):
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            return square_resize(decode_jpeg(data, mode=mode, device=device), size)
        except (RuntimeError, ValueError):
            pass
    try:
        return torch.from_numpy(decode_bytes(bytes(data.numpy()), size, channels)).to(device)
    except BadImage:
        return None


def decode_batch(encoded: list[torch.Tensor], size: int, channels: int, device: torch.device
                 ) -> tuple[torch.Tensor | None, list[int]]:
    """Decode a list of encoded images (1-D uint8 tensors on the host) on ``device``: the uint8 batch
    (B', C, size, size) of the readable ones and the positions of those that were not."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    jpeg = [i for i, d in enumerate(encoded) if is_jpeg(d)]
    out: list[torch.Tensor | None] = [None] * len(encoded)
    if jpeg:
        try:  # one call for the batch (nvJPEG's batched decode on CUDA)
            decoded = decode_jpeg([encoded[i] for i in jpeg], mode=mode, device=device)
            for i, img in zip(jpeg, decoded):
                out[i] = square_resize(img, size)
        except RuntimeError:  # a corrupt member: each alone, to skip only the bad ones
            for i in jpeg:
                out[i] = _decode_one(encoded[i], size, channels, device)
    for i, d in enumerate(encoded):
        if out[i] is None and i not in jpeg:
            out[i] = _decode_one(d, size, channels, device)
    bad = [i for i, x in enumerate(out) if x is None]
    good = [x for x in out if x is not None]
    return (torch.stack(good) if good else None), bad
