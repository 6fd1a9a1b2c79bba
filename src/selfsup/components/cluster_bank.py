"""DeepCluster-v2's memory of embeddings and its clusterings (Caron et al. 2020, the SwAV paper's DeepCluster-v2).

For every training image the bank keeps the latest embedding of each of its ``views`` assignment crops
(``rows`` (V, N, D), written after every optimizer step from the batch's dataset indices, overwritten as in the
authors' code, not averaged). At the end of every epoch, i.e. at the start of the next one (and, in the first
epoch, ``first_epoch_clusterings`` times before its end: see the method), it runs spherical k-means (:mod:`selfsup.components.kmeans`) on the rows of the images seen so far, once per prototype set s
(set s clusters the embeddings of view ``s mod V``), and keeps the centroids (S, K, D), which are the method's
prototypes for the next epoch, and every image's cluster in each set (``assignments`` (S, N); −1 for an image
not in the bank yet).

Everything lives in buffers, so a checkpoint holds the bank, the centroids and the assignments and ``--resume``
continues from them bit for bit. Under torchrun every rank holds the whole bank: the staged indices and
embeddings of every rank are gathered in ``after_step``; the k-means is seeded from ``seed`` and the step, so
every rank computes the same clustering.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import SharedPart, Staged, StepContext
from .gather import gather_no_grad
from .kmeans import spherical_kmeans


class ClusterBank(SharedPart):
    """``views`` embeddings of size ``dim`` for ``size`` images, clustered into ``sets`` × ``k`` centroids."""
    rows: torch.Tensor
    seen: torch.Tensor
    centroids: torch.Tensor
    assignments: torch.Tensor

    def __init__(self, size: int, dim: int, views: int, sets: int, k: int, iterations: int = 10, seed: int = 0,
                 first_epoch_clusterings: int = 0, *, owner: str = "method") -> None:
        super().__init__()
        if size < 2:
            raise ConfigError(f"{owner} needs a memory bank with one row per training image, but num_train is {size}; "
                              "build the method with num_train=<number of training images>")
        self.iterations, self.seed, self.owner = iterations, seed, owner
        self.first_epoch_clusterings = first_epoch_clusterings
        self.register_buffer("rows", torch.zeros(views, size, dim))
        self.register_buffer("seen", torch.zeros(size, dtype=torch.bool))
        # before the first clustering: random unit prototypes (images then go to their nearest one)
        self.register_buffer("centroids", F.normalize(torch.randn(sets, k, dim), dim=-1))
        self.register_buffer("assignments", torch.full((sets, size), -1, dtype=torch.long))
        self._staged = Staged()

    def stage(self, index: torch.Tensor, embeddings: torch.Tensor, ctx: StepContext | None = None) -> None:
        """Embeddings (V, B, D) of images ``index`` (B,), written to the bank after the optimizer step."""
        self._staged.add(index, embeddings.transpose(0, 1), step=None if ctx is None else ctx.step)

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        staged = self._staged.take()
        if staged is not None:
            index, emb = gather_no_grad(staged[0]), gather_no_grad(staged[1])
            self.rows[:, index] = emb.transpose(0, 1).to(self.rows.dtype)
            self.seen[index] = True
        if self.clusters_after(ctx):
            self.cluster(ctx.step + 1)

    def clusters_after(self, ctx: StepContext) -> bool:
        """The last step of every epoch (the clustering for the next one) and, during the first epoch,
        ``first_epoch_clusterings`` evenly spaced steps before it (over the images seen so far)."""
        spe = max(1, ctx.steps_per_epoch)
        if (ctx.step + 1) % spe == 0:
            return True
        every = max(1, -(-spe // (self.first_epoch_clusterings + 1)))
        return ctx.epoch == 0 and self.first_epoch_clusterings > 0 and (ctx.step + 1) % every == 0

    @torch.no_grad()
    def cluster(self, key: int) -> None:
        """k-means of the seen rows into every set's centroids and assignments, seeded by ``seed``, ``key`` (the
        number of steps taken) and the set."""
        seen = self.seen.nonzero().squeeze(1)
        if seen.numel() == 0:
            return
        sets, k, _ = self.centroids.shape
        for s in range(sets):
            x = self.rows[s % self.rows.shape[0], seen]
            centroids, assign = spherical_kmeans(x, k, self.iterations, seed=self.seed + 1_000_003 * key + s)
            self.centroids[s] = centroids
            self.assignments[s].fill_(-1)
            self.assignments[s, seen] = assign

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        saved = state_dict.get(prefix + "rows")
        if saved is not None and saved.shape != self.rows.shape:
            raise ConfigError(
                f"{self.owner}: the checkpoint's memory bank holds {saved.shape[1]} images but this run has "
                f"{self.rows.shape[1]} (or another embedding size or view count); data.path or a method option "
                "changed since the run started, and a memory bank cannot be resumed on other data")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
