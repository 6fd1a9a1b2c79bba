"""DeepCluster-v2 and SMoG: the losses against slow re-derivations of the papers' formulas (float64, values and
gradients), and their shared parts (k-means, the clustered memory bank, the momentum groups)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.components.base import StepContext
from selfsup.components.cluster_bank import ClusterBank
from selfsup.components.groups import MomentumGroups
from selfsup.components.kmeans import spherical_kmeans
from selfsup.losses.clustering import deepcluster_v2_loss, group_contrastive_loss


def _g(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grads(value, leaves):
    return torch.autograd.grad(value, leaves, retain_graph=True)


def test_deepcluster_v2_loss_matches_the_formula():
    S, V, B, K, tau = 2, 3, 4, 5, 0.1
    scores = (_g(S, V, B, K, seed=0) * 0.5).requires_grad_(True)
    targets = torch.randint(0, K, (S, B), generator=torch.Generator().manual_seed(1))
    ref = 0.0
    for s in range(S):  # per set: mean over the concatenated crops of the batch, then the mean over sets
        per_set = 0.0
        for v in range(V):
            for b in range(B):
                logits = [scores[s, v, b, k] / tau for k in range(K)]
                norm = torch.log(sum(torch.exp(x) for x in logits))
                per_set = per_set + (norm - logits[int(targets[s, b])])
        ref = ref + per_set / (V * B)
    ref = ref / S
    ours = deepcluster_v2_loss(scores, targets, tau)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(_grads(ours, [scores])[0], _grads(ref, [scores])[0], rtol=1e-8, atol=1e-12)


def test_group_contrastive_loss_matches_the_formula():
    N, G, D, tau = 5, 4, 3, 0.1
    p = _g(N, D, seed=0).requires_grad_(True)
    groups = _g(G, D, seed=1)
    targets = torch.tensor([0, 3, 1, 1, 2])

    def unit(v):
        return v / torch.sqrt(sum(x * x for x in v))

    ref = 0.0
    for n in range(N):
        pn = unit(p[n])
        logits = [sum(pn * unit(groups[g])) / tau for g in range(G)]
        ref = ref - (logits[int(targets[n])] - torch.log(sum(torch.exp(x) for x in logits)))
    ref = ref / N
    ours = group_contrastive_loss(p, groups, targets, tau)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(_grads(ours, [p])[0], _grads(ref, [p])[0], rtol=1e-8, atol=1e-12)


def _blobs(n_per=20, k=3, d=8, seed=0):
    centres = F.normalize(_g(k, d, seed=seed), dim=1) * 4
    x = torch.cat([centres[i] + 0.1 * _g(n_per, d, seed=seed + 1 + i) for i in range(k)])
    return F.normalize(x.float(), dim=1), torch.arange(k).repeat_interleave(n_per)


def test_spherical_kmeans_is_seeded_and_finds_separated_clusters():
    x, truth = _blobs()
    c1, a1 = spherical_kmeans(x, 3, 10, seed=4)
    c2, a2 = spherical_kmeans(x, 3, 10, seed=4)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    # the clustering is the truth up to a relabelling, and its centroids are the normalised cluster means
    assert all(len(set(a1[truth == t].tolist())) == 1 for t in range(3)) and len(set(a1.tolist())) == 3
    for k in range(3):
        torch.testing.assert_close(c1[k], F.normalize(x[a1 == k].mean(0), dim=0))
    _, few = spherical_kmeans(x[:2], 4, 3, seed=0)  # fewer rows than clusters: drawn with replacement, no error
    assert few.shape == (2,)


def test_cluster_bank_writes_after_the_step_and_clusters_at_the_epoch_end():
    bank = ClusterBank(size=10, dim=8, views=2, sets=2, k=3, iterations=5, seed=0)
    x, _ = _blobs(n_per=2, k=3)
    idx = torch.tensor([0, 2, 4, 6, 7, 9])
    bank.stage(idx, torch.stack([x, x.flip(0)]), StepContext(step=0, steps_per_epoch=2))
    assert not bank.seen.any()  # nothing changes in forward
    bank.after_step(StepContext(step=0, steps_per_epoch=2))
    assert torch.equal(bank.rows[0, idx], x) and torch.equal(bank.rows[1, idx], x.flip(0))
    assert (bank.assignments == -1).all()  # mid-epoch: no clustering yet
    bank.after_step(StepContext(step=1, epoch=0, steps_per_epoch=2))  # the epoch's last step
    assert (bank.assignments[:, idx] >= 0).all() and (bank.assignments[:, [1, 3, 5, 8]] == -1).all()
    # set 1 clusters view 1; its centroids are k-means of those rows with the epoch's seed
    centroids, assign = spherical_kmeans(bank.rows[1, idx], 3, 5, seed=0 + 1_000_003 * 2 + 1)  # after 2 steps
    assert torch.equal(bank.centroids[1], centroids) and torch.equal(bank.assignments[1, idx], assign)
    early = ClusterBank(size=10, dim=8, views=2, sets=2, k=3, first_epoch_clusterings=3)
    assert [early.clusters_after(StepContext(step=s, epoch=s // 8, steps_per_epoch=8)) for s in range(16)] == \
        [False, True, False, True, False, True, False, True] + [False] * 7 + [True]  # epoch 0: 3 + its end
    clone = ClusterBank(size=10, dim=8, views=2, sets=2, k=3)
    clone.load_state_dict(bank.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), bank.state_dict().values()))


def test_momentum_groups_follow_their_instances_and_reset_by_kmeans():
    torch.manual_seed(0)
    groups = MomentumGroups(n_groups=3, dim=8, momentum=0.9, reset_interval=3, memory_size=32)
    before = groups.features.clone()
    z = _g(6, 8, seed=5).float()
    assign = groups.assign(z)
    groups.stage(z, ctx=StepContext(step=0))
    groups.after_step(StepContext(step=0))
    zn = F.normalize(z, dim=1)
    for k in range(3):
        members = zn[assign == k]
        want = before[k] if len(members) == 0 else F.normalize(0.9 * before[k] + 0.1 * members.mean(0), dim=0)
        torch.testing.assert_close(groups.features[k], want)
    assert int(groups.memory.filled) == 6
    groups.after_step(StepContext(step=2))  # step 3 of 3: reset from the memory
    centroids, _ = spherical_kmeans(groups.memory.valid(), 3, 10, seed=2)
    torch.testing.assert_close(groups.features, centroids)
    assert math.isclose(float(groups.features.norm(dim=1).mean()), 1.0, rel_tol=1e-5)


def test_deepcluster_v2_targets_are_the_bank_clusters_or_the_nearest_prototype():
    from selfsup.backbones import build_backbone
    from selfsup.components.kmeans import nearest_centroid
    from selfsup.methods.base import build_method

    m = build_method("deepcluster-v2", build_backbone("convnet", width=0.25),
                     {"proj_hidden_dim": 16, "proj_dim": 8, "n_prototypes": 3, "n_prototype_sets": 2}, num_train=10)
    z = F.normalize(_g(2, 4, 8, seed=0).float(), dim=-1)
    idx = torch.tensor([1, 3, 5, 7])
    m.bank.assignments[:, 3] = torch.tensor([2, 0])  # image 3 clustered, the others not yet
    t = m.targets(idx, z)
    for s in range(2):
        want = nearest_centroid(z[s], m.bank.centroids[s])
        want[1] = m.bank.assignments[s, 3]
        assert torch.equal(t[s], want)
