"""Collapse monitors, measured at log steps on a batch's embeddings (and softmax outputs where a method has them).

- ``emb_std``: mean over dimensions of the per-dimension std of the L2-normalised embeddings ``(B, D)``
  (SimSiam, Chen & He 2021, Fig. 2). A collapsed encoder gives 0; isotropic Gaussian embeddings give
  ``1/√D``. ``emb_std_ratio = emb_std·√D`` puts it on a 0…1 scale (random-init CNN features: ~0.4-0.5).
- ``rankme``: effective rank ``exp(H(σ/‖σ‖₁))`` of the embedding matrix's singular values σ (RankMe, Garrido
  et al. 2023); between 1 (every embedding on one line) and min(B, D).
- For softmax-output methods (DINO, SwAV; ``MethodOutput.probs`` (B, K)), the two collapse forms of DINO
  (Caron et al. 2021): ``out_entropy``, the mean per-sample entropy, near log K when every output is
  uniform; ``out_marginal_entropy``, the entropy of the batch-mean distribution, near 0 when one dimension
  dominates for every input. Both are divided by log K (``*_ratio``) for the thresholds.

A monitor crossing its threshold gives one warning (again only after it recovered); with
``train.stop_on_collapse`` the trainer ends the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_stats(embedding: torch.Tensor) -> dict[str, torch.Tensor]:
    """``emb_std``, ``emb_std_ratio`` and ``rankme`` of embeddings (B, D), as 0-d tensors (no host sync)."""
    z = embedding.detach().float().flatten(1)
    d = z.shape[1]
    std = F.normalize(z, dim=1).std(dim=0).mean() if z.shape[0] > 1 else torch.zeros((), device=z.device)
    s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(1e-12)
    rank = torch.exp(-(p * torch.log(p + 1e-7)).sum())
    return {"emb_std": std, "emb_std_ratio": std * math.sqrt(d), "rankme": rank}


@torch.no_grad()
def entropy_stats(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean per-sample entropy and entropy of the mean of softmax outputs ``probs`` (B, K), and log K."""
    p = probs.detach().float().clamp_min(0)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-12)
    log_k = math.log(p.shape[1])
    per_sample = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean()
    m = p.mean(dim=0)
    marginal = -(m * torch.log(m.clamp_min(1e-12))).sum()
    return {"out_entropy": per_sample, "out_marginal_entropy": marginal,
            "out_entropy_ratio": per_sample / max(log_k, 1e-12),
            "out_marginal_entropy_ratio": marginal / max(log_k, 1e-12)}


@dataclass
class CollapseThresholds:
    std_ratio_min: float = 0.05  # emb_std below 5% of 1/√D
    rankme_min: float = 2.0  # effectively one direction
    entropy_ratio_max: float = 0.98  # per-sample entropy ≥ 98% of log K: uniform outputs
    marginal_entropy_ratio_min: float = 0.05  # batch-mean entropy ≤ 5% of log K: one dimension dominates


@dataclass
class CollapseMonitor:
    """Measures at log steps and reports threshold crossings once (``check`` returns the new alerts)."""

    thresholds: CollapseThresholds = field(default_factory=CollapseThresholds)
    active: set[str] = field(default_factory=set)

    def measure(self, embedding: torch.Tensor | None, probs: torch.Tensor | None = None) -> dict[str, float]:
        """Monitor values as floats (one host sync; call at log steps only)."""
        stats: dict[str, torch.Tensor] = {}
        if embedding is not None and embedding.ndim >= 2 and embedding.shape[0] > 1:
            stats.update(embedding_stats(embedding))
        if probs is not None and probs.ndim == 2 and probs.shape[1] > 1:
            stats.update(entropy_stats(probs))
        if not stats:
            return {}
        values = torch.stack([v.reshape(()) for v in stats.values()]).cpu().tolist()
        return dict(zip(stats, values))

    def problems(self, stats: dict[str, float]) -> dict[str, str]:
        """{monitor: explanation} for every monitor past its threshold."""
        t, out = self.thresholds, {}
        if "emb_std_ratio" in stats and stats["emb_std_ratio"] < t.std_ratio_min:
            out["emb_std"] = (f"embedding std {stats['emb_std']:.2e} is {stats['emb_std_ratio']:.3f}× 1/sqrt(d) "
                              f"(< {t.std_ratio_min}): embeddings are (nearly) identical for all inputs")
        if "rankme" in stats and stats["rankme"] < t.rankme_min:
            out["rankme"] = (f"effective rank (RankMe) {stats['rankme']:.2f} < {t.rankme_min}: embeddings lie on "
                             "(nearly) one direction")
        if "out_entropy_ratio" in stats and stats["out_entropy_ratio"] > t.entropy_ratio_max:
            out["out_entropy"] = (f"output entropy {stats['out_entropy']:.3f} is {stats['out_entropy_ratio']:.3f}× "
                                  f"log K (> {t.entropy_ratio_max}): outputs are uniform (collapse form 1)")
        if "out_marginal_entropy_ratio" in stats and stats["out_marginal_entropy_ratio"] < t.marginal_entropy_ratio_min:
            out["out_marginal_entropy"] = (f"entropy of the mean output {stats['out_marginal_entropy']:.3f} is "
                                           f"{stats['out_marginal_entropy_ratio']:.3f}× log K "
                                           f"(< {t.marginal_entropy_ratio_min}): one dimension dominates (collapse form 2)")
        return out

    def check(self, stats: dict[str, float]) -> list[str]:
        """New alerts since the last call (a monitor that stays collapsed is reported once)."""
        now = self.problems(stats)
        new = [msg for k, msg in now.items() if k not in self.active]
        self.active = set(now)
        return new


class CollapseWarning(UserWarning):
    """A collapse monitor crossed its threshold during pretraining."""
