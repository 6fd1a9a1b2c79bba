"""Vision Transformer (Dosovitskiy et al. 2021) with the backbone protocol, token access for masked image modelling
and the last block's attention for visualisation.

* Patch embedding: a ``p×p`` stride-``p`` convolution; ``p`` comes from ``backbone.patch_size`` or, when unset,
  from the image size (4 for ≤ 32 px, 8 for ≤ 64 px, 16 above: an 8×8 grid or more for small images).
* A CLS token; 2-D sin-cos position embeddings (fixed, MAE/MoCo v3) or learned ones. Both follow the input's grid:
  sin-cos is recomputed, learned embeddings are bicubically interpolated, so a model built at 32 px runs at 64 px.
* Pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))``; attention via ``F.scaled_dot_product_attention``.
  Large models: the blocks are the FSDP units (``repeated_blocks``) and can recompute their activations in
  backward (``set_activation_checkpointing``; ``train.fsdp``, ``train.activation_checkpointing``).
* ``forward`` → pooled features (B, D) (final-norm CLS token, or the mean of patch tokens with ``pool="mean"``);
  ``forward_stages`` → ``block1 … blockN`` tokens (B, 1 + N, D), ``tokens`` (final norm) and ``pooled``;
  ``forward_tokens(x, keep=..., mask=..., mask_token=...)`` for MAE (encode a subset of patches) and BEiT
  (replace masked patch embeddings); ``get_last_attention(x)`` → CLS → patch attention (B, heads, gh, gw);
  ``forward_blocks(x)`` → every block's output (data2vec).
* Options: ``registers`` (Darcet et al. 2024): register tokens after CLS, dropped from every output;
  ``attn_mask`` on ``forward_tokens`` / ``Block`` / ``Attention`` (boolean, True = may attend), e.g.
  :func:`prefix_causal_mask` for AIM's prefix-causal attention.

Sizes (embed dim / depth / heads): ``vit-tiny`` 192/12/3, ``vit-small`` 384/12/6, ``vit`` ViT-B's depth 12 with
``12·width`` heads of 64 (width 1 → ViT-B 768, 0.5 → ViT-S, 0.25 → ViT-T). The tests register their own tiny
size (``vit-test``, 32/2/2) in ``tests/conftest.py`` with :func:`vit_factory`.
"""
from __future__ import annotations

import re
import typing

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..registry import BACKBONES
from .base import Backbone, BackboneSpec


def default_patch_size(image_size: int) -> int:
    """4 for images ≤ 32 px, 8 for ≤ 64 px, 16 above."""
    return 4 if image_size <= 32 else 8 if image_size <= 64 else 16


def sincos_pos_embed(dim: int, grid: tuple[int, int], *, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos embeddings (B=1, gh·gw, dim): half the channels encode the row, half the column,
    each as ``[sin(pos·ω_k), cos(pos·ω_k)]`` with ``ω_k = 10000^(−k/(dim/4))`` (MAE, MoCo v3)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dim divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32, device=device),
                            torch.arange(gw, dtype=torch.float32, device=device), indexing="ij")
    out_y = ys.flatten()[:, None] * omega[None]
    out_x = xs.flatten()[:, None] * omega[None]
    emb = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)
    return emb.unsqueeze(0)


def interpolate_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize learned patch position embeddings (1, gh·gw, D) to another grid with bicubic interpolation."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    d = pos.shape[-1]
    p = pos.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    p = F.interpolate(p.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return p.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)


def prefix_causal_mask(n: int, prefix: int | torch.Tensor, *, device: torch.device | str | None = None
                       ) -> torch.Tensor:
    """Boolean prefix-causal attention mask (True = may attend), for AIM (El-Nouby et al. 2024).

    Query ``q`` attends key ``k`` iff ``k ≤ q`` or ``k < prefix``: bidirectional among the first ``prefix``
    tokens, causal after them (``prefix`` 0 or 1: plain causal). ``prefix`` an int → (n, n); a (B,) tensor of
    per-sample prefixes → (B, 1, n, n), broadcast over the heads by ``F.scaled_dot_product_attention``.
    """
    if isinstance(prefix, torch.Tensor):
        dev = device if device is not None else prefix.device
        i = torch.arange(n, device=dev)
        causal = i.view(1, 1, 1, n) <= i.view(1, 1, n, 1)
        return causal | (i.view(1, 1, 1, n) < prefix.to(dev).view(-1, 1, 1, 1))
    i = torch.arange(n, device=device)
    return (i[None, :] <= i[:, None]) | (i[None, :] < int(prefix))


class Attention(nn.Module):
    """Multi-head self-attention (B, L, D) → (B, L, D) with a fused kernel; ``weights`` computes it explicitly.

    ``attn_mask``: an optional boolean mask broadcastable to (B, heads, L, L), True where a query may attend a key
    (``F.scaled_dot_product_attention``'s convention; every query must be allowed at least one key)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (B, heads, L, d_head)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(o.transpose(1, 2).flatten(2))

    def weights(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q kᵀ / √d) (B, heads, L, L), the matrix the fused kernel never materialises; masked keys get 0."""
        q, k, _ = self._qkv(x)
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        return torch.softmax(logits, dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU, hidden = ratio·dim).

    ``checkpointed`` (activation checkpointing, set through :meth:`ViT.set_activation_checkpointing`): in training
    with gradients the block keeps only its input and recomputes its activations in backward
    (``torch.utils.checkpoint``, non-reentrant). The recomputation is inside the block's ``forward``, so the hooks
    on the block itself (FSDP2's all-gather and reshard, engine/fsdp.py) stay outside the recomputed region.
    """

    checkpointed: bool = False

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.checkpointed and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, attn_mask, use_reentrant=False)
        return self._forward(x, attn_mask)

    def _forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class ViT(Backbone):
    """A ViT encoder; see the module docstring. ``image_size`` sets the grid the parameters are built for;
    other sizes divisible by ``patch_size`` work too (position embeddings follow the grid).

    ``registers`` > 0 adds that many register tokens (Darcet et al. 2024, "Vision Transformers Need Registers"):
    learned tokens placed after CLS, with no position embedding, that take part in every block and are dropped
    from every output (tokens, stages, pooled features, attention maps). With 0 (the default) the model, its
    state_dict keys and its random initialisation are exactly those of a ViT without the option."""
    pos_embed: torch.Tensor
    reg_token: nn.Parameter | None

    supports_attention = True
    supports_activation_checkpointing = True
    layer_decay_rule = "vit_layer_decay_groups"

    def __init__(self, *, image_size: int = 32, patch_size: int | None = None, in_channels: int = 3,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0,
                 pos_embed: str = "sincos", pool: str = "cls", registers: int = 0) -> None:
        super().__init__()
        if registers < 0:
            raise ConfigError(f"backbone.registers must be >= 0, got {registers}")
        p = patch_size if patch_size is not None else default_patch_size(image_size)
        if p < 1 or image_size % p:
            raise ConfigError(f"image size {image_size} is not divisible by backbone.patch_size={p}; "
                              "pick a patch size that divides it (or --image-size)")
        if pos_embed not in ("sincos", "learned"):
            raise ConfigError(f"ViT pos_embed must be 'sincos' or 'learned', got '{pos_embed}'")
        if pool not in ("cls", "mean"):
            raise ConfigError(f"ViT pool must be 'cls' or 'mean', got '{pool}'")
        self.in_channels = in_channels
        self.patch_size = p
        self.grid = (image_size // p, image_size // p)
        self.num_features = self.embed_dim = dim
        self.depth, self.num_heads = depth, heads
        self.pool, self.pos_embed_kind = pool, pos_embed
        self.stage_names = tuple(f"block{i + 1}" for i in range(depth))
        self.patch_embed = nn.Conv2d(in_channels, dim, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.num_registers = registers
        self.num_prefix_tokens = 1 + registers  # CLS, then the registers, then the patches
        self.reg_token = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        n = self.grid[0] * self.grid[1]
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", sincos_pos_embed(dim, self.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE / MoCo v3: xavier for linear layers and the patch projection (as a linear map), small CLS init
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.reg_token is not None:  # last, so that a ViT without registers draws the same weights
            nn.init.normal_(self.reg_token, std=1e-6)  # DINOv2 and timm initialise registers this way

    # -- geometry ---------------------------------------------------------------------------------------
    def grid_for(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid (gh, gw) of images ``x`` (B, C, H, W); a one-line error when p does not divide H, W."""
        self.check_input(x)
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ConfigError(f"image size {h}x{w} is not divisible by backbone.patch_size={p}")
        return h // p, w // p

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Patch position embeddings (1, gh·gw, D) for ``grid``."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        if self.pos_embed_kind == "sincos":
            return sincos_pos_embed(self.embed_dim, grid, device=self.pos_embed.device).to(self.pos_embed.dtype)
        return interpolate_pos_embed(self.pos_embed, self.grid, grid)

    # -- tokens -----------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, *, keep: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Input tokens (B, T + N', D) before the blocks: CLS, the registers (T = ``num_prefix_tokens`` =
        1 + ``registers``; no position embedding on either), then patches with position embeddings.

        ``mask`` (B, N) bool with ``mask_token`` (D,): masked patch embeddings are replaced (BEiT).
        ``keep`` (B, K) patch indices: only those patches are kept, N' = K (MAE's encoder, I-JEPA's context).
        A caller that runs ``blocks`` itself gets the outputs' layout back with :meth:`drop_registers`.
        """
        grid = self.grid_for(x)
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        if mask is not None:
            if mask_token is None:
                raise ValueError("embed: a mask needs a mask_token")
            t = torch.where(mask.unsqueeze(-1), mask_token.to(t.dtype).view(1, 1, -1), t)
        t = t + self.pos_embed_for(grid)
        if keep is not None:
            t = torch.gather(t, 1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        prefix = [self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(t.shape[0], -1, -1).to(t.dtype))
        return torch.cat([*prefix, t], dim=1)

    def drop_registers(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T + N', D) block tokens → (B, 1 + N', D): CLS and the patches (the identity without registers)."""
        if not self.num_registers:
            return tokens
        return torch.cat([tokens[:, :1], tokens[:, self.num_prefix_tokens:]], dim=1)

    def forward_blocks(self, x: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                       **kw) -> list[torch.Tensor]:
        """Every block's output (B, 1 + N', D), registers dropped, before the final norm (data2vec's targets);
        keywords as in :meth:`forward_tokens`."""
        t = self.embed(x, **kw)
        out = []
        for blk in self.blocks:
            t = blk(t, attn_mask)
            out.append(self.drop_registers(t))
        return out

    def forward_tokens(self, x: torch.Tensor, *, attn_mask: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """Final-norm tokens (B, 1 + N', D): CLS then the patches (registers dropped); keywords as in
        :meth:`embed` (``keep``, ``mask``, ``mask_token``). ``attn_mask``: a boolean attention mask for every
        block, broadcastable to (B, heads, L, L) over the *whole* input sequence, L = T + N' (prefix tokens
        included), True where a query may attend a key; e.g. :func:`prefix_causal_mask` (AIM)."""
        t = self.embed(x, **kw)
        for blk in self.blocks:
            t = blk(t, attn_mask)
        return self.norm(self.drop_registers(t))

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) final-norm tokens → (B, D): the CLS token, or the mean of the patch tokens."""
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_tokens(self.forward_tokens(x))

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        blocks = self.forward_blocks(x)
        out: dict[str, torch.Tensor] = dict(zip(self.stage_names, blocks))
        t = self.norm(blocks[-1] if blocks else self.drop_registers(self.embed(x)))
        out["tokens"] = t
        out["pooled"] = self.pool_tokens(t)
        return out

    def layer_decay_groups(self, lr: float, decay: float, weight_decay: float = 0.0) -> list[dict]:
        return vit_layer_decay_groups(self, lr, decay, weight_decay=weight_decay)

    # -- large models (engine/fsdp.py) ---------------------------------------------------------------
    def repeated_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def set_activation_checkpointing(self, on: bool) -> None:
        for blk in self.blocks:
            typing.cast(Block, blk).checkpointed = on

    # -- export ---------------------------------------------------------------------------------------
    export_key_names = "timm"

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under timm's VisionTransformer names (``patch_embed.proj``, ``mlp.fc1/fc2``, ``pos_embed``
        of shape (1, T + N, D) with zero slots for the CLS token and the registers, which get no position
        embedding here; registers under timm's ``reg_token``), so ``timm.create_model(..., img_size, patch_size,
        embed_dim, depth, num_heads, num_classes=0)`` (plus ``reg_tokens=R`` with registers) loads them."""
        out: dict[str, torch.Tensor] = {}
        for k, v in self.state_dict().items():
            if k == "pos_embed":
                continue
            k = k.replace("patch_embed.", "patch_embed.proj.").replace(".mlp.0.", ".mlp.fc1.")
            out[k.replace(".mlp.2.", ".mlp.fc2.")] = v
        pos = self.pos_embed_for(self.grid).detach()
        prefix = pos.new_zeros(1, self.num_prefix_tokens, pos.shape[-1])
        out["pos_embed"] = torch.cat([prefix, pos], dim=1)
        return out

    def import_state_dict(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's names back to ours; a learned ``pos_embed`` loses its CLS (and register) slots. A sin-cos ViT
        keeps no position embedding in its state, so a file's ``pos_embed`` stays under its name (reported
        unexpected)."""
        own = self.state_dict()
        out: dict[str, torch.Tensor] = {}
        for k, v in weights.items():
            if (k == "pos_embed" and "pos_embed" in own and v.ndim == 3
                    and v.shape[1] == own[k].shape[1] + self.num_prefix_tokens):
                v = v[:, self.num_prefix_tokens:]
            k = k.replace("patch_embed.proj.", "patch_embed.").replace(".mlp.fc1.", ".mlp.0.")
            out[k.replace(".mlp.fc2.", ".mlp.2.")] = v
        return out

    # -- attention --------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's CLS → patch attention (B, heads, gh, gw), each map renormalised to sum to 1 over
        the patches (the CLS → CLS and CLS → register weights are dropped, as in DINO's visualisations)."""
        grid = self.grid_for(x)
        t = self.embed(x)
        for blk in self.blocks[:-1]:
            t = blk(t)
        last = typing.cast(Block, self.blocks[-1])
        a = last.attn.weights(last.norm1(t))[:, :, 0, self.num_prefix_tokens:].float()  # (B, heads, N)
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return a.reshape(a.shape[0], a.shape[1], *grid)


def vit_layer_decay_groups(model: nn.Module, lr: float, decay: float, *, weight_decay: float = 0.0,
                           exclude_norm_bias: bool = True) -> list[dict]:
    """Parameter groups for fine-tuning with layer-wise lr decay (BEiT, MAE fine-tuning).

    Layer ids: 0 for the patch embedding, CLS and register tokens and position embeddings, ``i + 1`` for block
    ``i``, and ``depth + 1`` for everything after the blocks (final norm, heads). A group's lr is
    ``lr · decay^(depth + 1 − id)``; each group also carries ``lr_scale`` so schedules can rescale it.
    ``model`` is a :class:`ViT` or any module holding one (e.g. a classifier ``backbone.`` prefix).
    """
    vits = [m for m in model.modules() if isinstance(m, ViT)]
    if not vits:
        raise ConfigError(f"layer-wise lr decay needs a ViT backbone, got {type(model).__name__}")
    return block_layer_decay_groups(model, vits[0].depth, lr, decay, weight_decay=weight_decay,
                                    exclude_norm_bias=exclude_norm_bias)


def block_layer_decay_groups(model: nn.Module, depth: int, lr: float, decay: float, *, weight_decay: float = 0.0,
                             exclude_norm_bias: bool = True) -> list[dict]:
    """:func:`vit_layer_decay_groups` for any module whose transformer blocks are named ``blocks.<i>.`` (our
    ViT, timm's): ``depth`` blocks, patch embedding / CLS / position embeddings below them."""
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"layer decay must be in (0, 1], got {decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
        if m:
            lid = int(m.group(1)) + 1
        elif re.search(r"(?:^|\.)(patch_embed|cls_token|reg_token|pos_embed)(\.|$)", name):
            lid = 0
        else:
            lid = depth + 1
        no_wd = exclude_norm_bias and p.ndim <= 1 or name.endswith(("cls_token", "reg_token", "pos_embed"))
        key = (lid, no_wd)
        if key not in groups:
            scale = decay ** (depth + 1 - lid)
            groups[key] = {"params": [], "lr": lr * scale, "lr_scale": scale, "layer_id": lid,
                           "weight_decay": 0.0 if no_wd else weight_decay}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def vit_factory(dim: int, depth: int, heads: int, *, scale_heads: int | None = None):
    """A registry factory ``BackboneSpec -> ViT`` of a fixed size (``scale_heads``: heads = round(that · width));
    ``spec.registers`` register tokens."""
    def make(spec: BackboneSpec) -> ViT:
        h, d = heads, dim
        if scale_heads is not None:  # `vit`: width scales the number of 64-d heads
            h = max(1, int(round(scale_heads * spec.width)))
            d = 64 * h
        return ViT(image_size=spec.image_size, patch_size=spec.patch_size, in_channels=spec.in_channels,
                   dim=d, depth=depth, heads=h, registers=spec.registers)
    return make


BACKBONES.register("vit-tiny", help="ViT-Tiny: dim 192, depth 12, 3 heads; patch from backbone.patch_size")(
    vit_factory(192, 12, 3))
BACKBONES.register("vit-small", help="ViT-Small: dim 384, depth 12, 6 heads; patch from backbone.patch_size")(
    vit_factory(384, 12, 6))
BACKBONES.register("vit", help="ViT, depth 12, round(12·width) heads of 64 (width 1 = ViT-B, 0.25 = ViT-T)")(
    vit_factory(768, 12, 12, scale_heads=12))
