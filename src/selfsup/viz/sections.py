"""The sections of a run's report: each builder fills a :class:`~selfsup.viz.html.Section` with plain values
(text, table cells, PNGs) from a :class:`~selfsup.viz.run_context.RunContext`, or with a note saying what is
missing. The template escapes every value; no builder writes HTML.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml

from . import plots
from .html import Section
from .run_context import RunContext, images_at, unnormalise

SECTIONS = ("summary", "curves", "knn", "monitors", "augmentations", "tsne", "retrieval", "layers", "attention",
            "evaluation", "config")
TITLES = {"summary": "Summary", "curves": "Loss and learning rate", "knn": "Online kNN", "monitors":
          "Collapse monitors", "augmentations": "Augmentation preview", "tsne": "t-SNE of test embeddings",
          "retrieval": "Nearest-neighbour retrieval", "layers": "Layer-wise linear probe", "attention":
          "Attention maps", "evaluation": "Evaluation", "config": "Resolved config"}


def s_summary(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if ctx.info is None:
        s.note("no run.json: the run has not finished (or was interrupted); see the curves for its progress")
    else:
        s.table(["key", "value"], [[k, v] for k, v in ctx.info.items()])


def s_curves(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    p = ctx.png(plots.plot_curves(ctx.records), "curves")
    if p is None:
        s.note("no metrics.jsonl records: nothing logged yet")
    else:
        s.image(p, "loss averaged over each logging window; learning rate at the window's last step")


def s_knn(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    p = ctx.png(plots.plot_knn(ctx.records), "knn")
    if p is None:
        s.note("no online kNN records (pretrain with --knn-every K on labelled data to log them)")
    else:
        s.image(p)


def s_monitors(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    p = ctx.png(plots.plot_monitors(ctx.records), "monitors")
    if p is None:
        s.note("no collapse-monitor records in metrics.jsonl")
    else:
        s.image(p, "measured on a batch's embeddings at log steps (engine/monitors.py)")
    alert = (ctx.info or {}).get("collapse")
    if alert:
        s.note(f"collapse warning during training: {alert}")


def s_augmentations(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if (why := ctx.need("config", "built")) is not None:
        return s.note(f"no augmentation preview: {why}")
    b = ctx.built()
    x = images_at(b.data.train, preview_indices(b.data.train.labels, opts["preview"], b.data.train.num_images))
    gen = torch.Generator(device=b.device).manual_seed(0)
    views = b.views(x.to(b.device), gen)
    rows = [("original", list(x))] + [(f"view {i + 1}", list(unnormalise(v, b.data.mean, b.data.std)))
                                      for i, v in enumerate(views)]
    assert ctx.config is not None  # ctx.need("config") above
    name = getattr(b.views, "names", None) or ctx.config.get("augment", {}).get("preset") or \
        type(b.method).default_augment
    name = " + ".join(name) if isinstance(name, list) else name
    p = ctx.png(plots.image_grid(rows, title=f"Views as the method saw them (preset: {name})"), "augmentations")
    assert p is not None  # the grid has rows: a figure
    s.image(p, f"{len(views)} views per image, un-normalised for display; images drawn across the classes")


def preview_indices(labels: torch.Tensor | None, n: int, num_images: int) -> list[int]:
    """``n`` images across the classes: the first of each class, then the second of each, ... (a folder is
    sorted by class, so its first ``n`` images are usually one class); unlabelled data: evenly spaced."""
    n = min(n, num_images)
    if labels is None:
        return sorted({int(i * num_images / max(n, 1)) for i in range(n)})
    per_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        per_class.setdefault(int(y), []).append(i)
    order: list[int] = []
    rank = 0
    while len(order) < n:
        order += [ids[rank] for _, ids in sorted(per_class.items()) if rank < len(ids)][: n - len(order)]
        rank += 1
    return order


def s_tsne(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if (why := ctx.need("checkpoint", "built")) is not None:
        return s.note(f"no t-SNE: {why}")
    from sklearn.manifold import TSNE

    b = ctx.built()
    f, y = ctx.features("test", opts["tsne_points"])
    if f.shape[0] < 5:
        return s.note(f"no t-SNE: only {f.shape[0]} test images")
    emb = TSNE(n_components=2, init="pca", perplexity=min(30.0, (f.shape[0] - 1) / 3), random_state=0
               ).fit_transform(F.normalize(f, dim=1).numpy())
    fig = plots.plot_embedding(emb, None if y is None else y.numpy(), b.data.classes,
                               title=f"t-SNE of {f.shape[0]} test embeddings (frozen backbone)")
    p = ctx.png(fig, "tsne")
    assert p is not None  # plot_embedding always makes a figure
    s.image(p, "L2-normalised pooled features; colours are labels (never seen in pretraining)")


def s_retrieval(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if (why := ctx.need("checkpoint", "built")) is not None:
        return s.note(f"no retrieval grid: {why}")
    b = ctx.built()
    ftr, ytr = ctx.features("train", opts["retrieval_pool"])
    fte, yte = ctx.features("test", max(opts["tsne_points"], opts["queries"]))
    k = min(opts["neighbours"], ftr.shape[0])
    q_idx = torch.linspace(0, fte.shape[0] - 1, min(opts["queries"], fte.shape[0])).round().long().unique()
    top, wrong_mask = retrieve(ftr, ytr, fte[q_idx], None if yte is None else yte[q_idx], k)
    q_imgs = images_at(b.data.test or b.data.train, q_idx.tolist())
    rows, borders = [], []
    for i, qi in enumerate(q_idx.tolist()):
        rows.append((f"query {qi}", [q_imgs[i]] + list(images_at(b.data.train, top[i].tolist()))))
        marks: list[str | None] = [None] * k if wrong_mask is None else ["red" if w else None for w in wrong_mask[i].tolist()]
        borders.append(["black", *marks])
    wrong, total = (0, 0) if wrong_mask is None else (int(wrong_mask.sum()), wrong_mask.numel())
    fig = plots.image_grid(rows, title=f"Top-{k} neighbours (cosine) among {ftr.shape[0]} train images",
                           borders=borders, col_titles=["query"] + [f"#{j + 1}" for j in range(k)])
    cap = "queries spread over the test split; red frame: a neighbour of another class"
    if total:
        cap += f" ({wrong}/{total} = {100 * wrong / total:.0f}% wrong-class)"
    p = ctx.png(fig, "retrieval")
    assert p is not None  # the grid has rows: a figure
    s.image(p, cap)


def retrieve(train_feats: torch.Tensor, train_labels: torch.Tensor | None, query_feats: torch.Tensor,
             query_labels: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top-``k`` train indices (Q, k) by cosine similarity for each query (Q, D), best first, and where labels
    exist a (Q, k) bool mask of neighbours whose class differs from the query's."""
    sim = F.normalize(query_feats.float(), dim=1) @ F.normalize(train_feats.float(), dim=1).T
    top = sim.topk(min(k, train_feats.shape[0]), dim=1).indices
    if train_labels is None or query_labels is None:
        return top, None
    return top, train_labels[top] != query_labels[:, None]


def s_layers(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if ctx.evals and ctx.evals.get("layers"):
        from ..evaluation.layers import plot_layers

        p = plot_layers(ctx.evals, ctx.png_dir / "layers.png")
        if p is not None:
            return s.image(p)
    if (ctx.run_dir / "layers.png").is_file():
        return s.image(ctx.run_dir / "layers.png")
    s.note("no layer-wise probe (run `selfsup eval RUN --protocol layers`)")


def s_attention(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if (why := ctx.need("checkpoint", "built")) is not None:
        return s.note(f"no attention maps: {why}")
    b = ctx.built()
    backbone = b.method.eval_backbone()
    if not backbone.supports_attention:
        return s.note(f"attention maps are for ViT runs; this run's backbone is {type(backbone).__name__}")
    from ..augment.pipeline import eval_view
    from .attention import attention_maps, save_attention_pngs

    split = b.data.test or b.data.train
    x = images_at(split, range(min(opts["attention"], split.num_images)))
    maps = attention_maps(backbone, eval_view(split.image_size[0], b.data.mean, b.data.std)(x.to(b.device)))
    for p in save_attention_pngs(x, maps, ctx.png_dir, prefix="attention"):
        s.image(p)
    s.caption("last block, CLS → patch attention: the image, the mean over heads, then each head")


def _pct(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{100 * m['mean']:.1f}" + (f" ± {100 * m['std']:.1f}" if m.get("std") else "")


def s_evaluation(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if not ctx.evals:
        return s.note("no eval.json (run `selfsup eval RUN`)")
    rows = []
    base = ctx.evals.get("baseline") or {}
    for proto, res in ctx.evals.items():
        if proto in ("protocol", "baseline") or not isinstance(res, dict) or "metrics" not in res:
            continue
        for metric, m in res["metrics"].items():
            b = (base.get(proto) or {}).get("metrics", {}).get(metric)
            gain = f"{100 * (m['mean'] - b['mean']):+.1f}" if b else ""
            rows.append([proto, metric, _pct(m), _pct(b), gain, res.get("labelled_images", ""), res.get("seconds", "")])
    s.table(["protocol", "metric", "trained %", "random-init %", "gain", "labels", "s"], rows)
    p = ctx.evals.get("protocol", {})
    s.caption(f'checkpoint {p.get("checkpoint", "?")} (step {p.get("step", "?")}), evaluated on '
              f'{p.get("eval_data", "?")}; baseline: {p.get("baseline", "?")}')


def s_config(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if ctx.config is None:
        return s.note(ctx.missing.get("config", "no config"))
    s.pre(yaml.safe_dump(ctx.config, sort_keys=False))


BUILDERS: dict[str, Callable[[RunContext, Section, dict[str, Any]], None]] = {
    "summary": s_summary, "curves": s_curves, "knn": s_knn, "monitors": s_monitors,
    "augmentations": s_augmentations, "tsne": s_tsne, "retrieval": s_retrieval, "layers": s_layers,
    "attention": s_attention, "evaluation": s_evaluation, "config": s_config}

DEFAULTS = {"preview": 8, "tsne_points": 2000, "queries": 8, "neighbours": 8, "retrieval_pool": 10000,
            "attention": 4}
