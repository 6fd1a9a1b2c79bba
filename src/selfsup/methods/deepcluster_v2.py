"""DeepCluster-v2 (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", the SwAV paper's improved DeepCluster).

backbone → projector → L2-normalise → dot products with the centroids of S prototype sets. A memory bank
(:class:`~selfsup.components.cluster_bank.ClusterBank`, addressed by the images' dataset indices) keeps each
image's latest embedding of its two global crops; at the start of every epoch spherical k-means of the bank
(10 iterations, the paper's random initialisation, seeded) gives every set's centroids, which *are* the
prototypes for that epoch, and every image's cluster; every crop then predicts its image's cluster in every set
(cross-entropy, temperature 0.1, :func:`~selfsup.losses.clustering.deepcluster_v2_loss`). Set s clusters the
embeddings of global crop ``s mod 2``, as in the authors' code.

What prevents collapse: the targets come from a clustering of the whole dataset's embeddings into K clusters
(each non-empty at its initialisation), not from the batch, and the prototypes are not learned (buffers;
solo-learn's implementation freezes them too).

Deviation: the authors fill the bank with a forward pass over the data before the first epoch. A method here
never sees the data outside its steps, so during the first epoch the bank fills from the training steps, is
clustered ``first_epoch_clusterings`` (10) times at evenly spaced steps over the images seen so far, and an
image with no cluster yet is assigned to its nearest current prototype (the k-means E-step; random unit
prototypes before the first clustering). Without the early clusterings the first epoch would train on
self-labels of random prototypes, which concentrate on a few of them. From the second epoch on every image has
its k-means cluster, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment.multicrop import count_global_views, group_by_size
from ..components.base import StepContext
from ..components.cluster_bank import ClusterBank
from ..components.kmeans import nearest_centroid
from ..config_checks import COUNT_CAP, SEED_CAP, checked, dim
from ..heads.mlp import projection_head
from ..losses.clustering import deepcluster_v2_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

N_ASSIGN_VIEWS = 2  # the two global crops are clustered (the paper's crops_for_assign = [0, 1])


@dataclass
class DeepClusterV2Config(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(128)
    # K per set: the paper's 3000 for ImageNet's 1.28M images; 500 keeps ~100 CIFAR images per cluster (50x
    # over-clustering of 10 classes, where 3000 is 3x ImageNet's 1000) and the per-epoch k-means cheap
    n_prototypes: int = dim(500, ge=2)
    n_prototype_sets: int = checked(3, ge=1, cap=64)  # the paper's 3 sets
    temperature: float = checked(0.1, gt=0)
    kmeans_iterations: int = checked(10, ge=1, cap=1000)
    kmeans_seed: int = checked(0, ge=0, cap=SEED_CAP)
    # k-means runs in the first epoch before its end, over the images seen so far (in place of the paper's
    # pass over the data before training; 0: only at the epoch's end)
    first_epoch_clusterings: int = checked(10, ge=0, cap=COUNT_CAP)


@register_method("deepcluster-v2", help="DeepCluster-v2: cross-entropy to per-epoch k-means clusters of a memory "
                                        "bank (Caron et al. 2020)")
class DeepClusterV2(Method):
    Config = DeepClusterV2Config
    cfg: DeepClusterV2Config
    default_augment = "multicrop"
    min_views = 2  # two global crops first (both are clustered), then local crops
    needs_index = True
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    supports_multicrop = True
    default_optimizer = "lars"
    base_lr = 0.3  # the paper's 4.8 at batch 4096
    default_weight_decay = 1e-6
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "n_prototypes": 4, "n_prototype_sets": 2}

    def __init__(self, backbone, cfg: DeepClusterV2Config | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2)
        self.bank = ClusterBank(self.num_train, c.proj_dim, N_ASSIGN_VIEWS, c.n_prototype_sets, c.n_prototypes,
                                c.kmeans_iterations, c.kmeans_seed, c.first_epoch_clusterings,
                                owner="deepcluster-v2")

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        if count_global_views(batch.views) < N_ASSIGN_VIEWS:
            raise ValueError("deepcluster-v2 expects 2 global crops (equal sizes) before any local crops")

    @torch.no_grad()
    def targets(self, index: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(S, B) clusters of the batch's images; an image not clustered yet gets the nearest current centroid
        to its embedding of the set's view (z: (V, B, D))."""
        assigned = self.bank.assignments[:, index]
        for s in range(assigned.shape[0]):
            nearest = nearest_centroid(z[s % N_ASSIGN_VIEWS].float(), self.bank.centroids[s])
            assigned[s] = torch.where(assigned[s] >= 0, assigned[s], nearest)
        return assigned

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        idx = batch.index
        assert idx is not None  # needs_index: check_batch enforces it
        zs, first_h = [], None
        for start, end in group_by_size(batch.views):
            h = self.backbone(torch.cat(batch.views[start:end]))
            first_h = h[: batch.views[0].shape[0]] if first_h is None else first_h
            zs += list(F.normalize(self.projector(h), dim=1).chunk(end - start))
        z = torch.stack(zs)  # (V, B, D)
        centroids = self.bank.centroids.to(z.dtype)
        scores = torch.einsum("vbd,skd->svbk", z, centroids)
        loss = deepcluster_v2_loss(scores, self.targets(idx, z.detach()), self.cfg.temperature)
        self.bank.stage(idx, z[:N_ASSIGN_VIEWS].detach(), ctx)
        probs = torch.softmax(scores[0, 0].detach().float() / self.cfg.temperature, dim=-1)
        assert first_h is not None
        return MethodOutput(loss=loss, embedding=first_h.detach(), probs=probs)
