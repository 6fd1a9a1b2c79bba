"""``selfsup report RUN`` → ``RUN/report.html`` (self-contained) and ``RUN/report/*.png``; several runs → one
comparison page.

What a run's page shows, and what each section needs:

=============== ======================================= ==============================================
section id      content                                 needs
=============== ======================================= ==============================================
summary         run.json (method, steps, speed, ...)    run.json
curves          loss and learning rate per step         metrics.jsonl
knn             online kNN top-1 per epoch              metrics.jsonl with ``knn_top1`` (--knn-every)
monitors        collapse monitors (std, RankMe, ...)    metrics.jsonl
augmentations   originals and their views, as trained   config + data
tsne            t-SNE of test embeddings, by label      config + data + checkpoint
retrieval       top-8 train neighbours of test queries  config + data + checkpoint
layers          layer-wise linear probe                 eval.json ``layers`` (or RUN/layers.png)
attention       CLS attention maps (ViT runs)           config + data + checkpoint, a ViT
evaluation      every protocol vs random init           eval.json
config          the resolved config                     config.yaml (or the checkpoint's)
=============== ======================================= ==============================================

A section whose inputs are missing (or that fails) gets a note saying why; the page is always written.
"""
from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import yaml

from . import plots
from .html import Section, markdown_table, render_page, table

SECTIONS = ("summary", "curves", "knn", "monitors", "augmentations", "tsne", "retrieval", "layers", "attention",
            "evaluation", "config")
TITLES = {"summary": "Summary", "curves": "Loss and learning rate", "knn": "Online kNN", "monitors":
          "Collapse monitors", "augmentations": "Augmentation preview", "tsne": "t-SNE of test embeddings",
          "retrieval": "Nearest-neighbour retrieval", "layers": "Layer-wise linear probe", "attention":
          "Attention maps", "evaluation": "Evaluation", "config": "Resolved config"}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; lines cut by a crash are skipped."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class RunContext:
    """What a run directory offers; loaded lazily, each failure recorded as a note for the sections that need it."""

    run_dir: Path
    png_dir: Path
    data_arg: str | None = None
    device: str = "cpu"
    records: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] | None = None
    evals: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    missing: dict[str, str] = field(default_factory=dict)  # "checkpoint"/"config"/"data" → why not available
    _ckpt: dict[str, Any] | None = None
    _built: Any = None
    _feats: dict[str, Any] = field(default_factory=dict)

    def load(self) -> None:
        self.records = read_metrics(self.run_dir / "metrics.jsonl")
        self.info = _read_json(self.run_dir / "run.json")
        self.evals = _read_json(self.run_dir / "eval.json")
        from ..engine.rundir import latest_checkpoint

        try:
            _, self._ckpt = latest_checkpoint(self.run_dir)
        except Exception as e:  # RunDirError, CheckpointError: the note says which
            self.missing["checkpoint"] = str(e)
        cfg_file = self.run_dir / "config.yaml"
        if cfg_file.is_file():
            try:
                self.config = yaml.safe_load(cfg_file.read_text())
            except yaml.YAMLError as e:
                self.missing["config"] = f"unreadable config.yaml ({type(e).__name__})"
        if self.config is None and self._ckpt is not None:
            self.config = self._ckpt.get("config")
        if self.config is None:
            self.missing.setdefault("config", f"no config.yaml in {self.run_dir}")

    def need(self, *what: str) -> str | None:
        """None when everything in ``what`` is available, else the reason."""
        for w in what:
            if w == "built":
                if "built" in self.missing:  # failed before: do not reload the data for every section
                    return self.missing["built"]
                try:
                    self.built()
                except Exception as e:
                    return self.missing.setdefault("built", f"cannot rebuild the model: {type(e).__name__}: {e}")
            elif w in self.missing:
                return self.missing[w]
        return None

    def built(self):
        """The run's model (weights from the checkpoint when there is one), data and view pipeline."""
        if self._built is None:
            if "config" in self.missing:
                raise RuntimeError(self.missing["config"])
            from ..config import build_run_config
            from ..data import load_dataset
            from ..engine.trainer import build_run, resolve_device

            cfg = build_run_config(self.config)
            data = load_dataset(self.data_arg or cfg.data.path, cfg.data.image_size, test_path=cfg.data.test_path)
            self._built = build_run(cfg, data, resolve_device(self.device))
            cell = _read_json(self.run_dir / "cell.json")
            if cell and cell.get("transforms"):  # a study cell trained with named transformations
                from ..augment.named import NamedViewPipeline

                self._built.views = NamedViewPipeline(cell["transforms"], data.image_size[0], data.mean, data.std)
            if self._ckpt is not None:
                self._built.method.load_state_dict(self._ckpt["method"])
            self._built.method.eval()
        return self._built

    def features(self, split: str, max_images: int):
        """Frozen eval-backbone features (N, D) and labels of the first ``max_images`` of a split (cached)."""
        key = (split, max_images)
        if key not in self._feats:
            from ..evaluation.features import extract_features

            b = self.built()
            sp = b.data.train if split == "train" else (b.data.test or b.data.train)
            self._feats[key] = extract_features(b.method.eval_backbone(), sp, b.data.mean, b.data.std, b.device,
                                                max_images=max_images)
        return self._feats[key]

    def png(self, fig, name: str) -> Path | None:
        return plots.save_png(fig, self.png_dir / f"{name}.png") if fig is not None else None


def images_at(split, idx: Sequence[int]) -> torch.Tensor:
    """uint8 images ``(len(idx), C, H, W)`` at dataset-order indices of any split."""
    if hasattr(split, "images"):
        return split.images[torch.as_tensor(list(idx), dtype=torch.long)]
    want = {int(i): k for k, i in enumerate(idx)}
    out: list[torch.Tensor | None] = [None] * len(idx)
    seen = 0
    for x, _, _ in split.batches(256, shuffle=False):
        for j in range(x.shape[0]):
            if seen + j in want:
                out[want[seen + j]] = x[j]
        seen += x.shape[0]
        if all(o is not None for o in out):
            break
    return torch.stack(out)  # type: ignore[arg-type]


def unnormalise(v: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Views back to [0, 1] for display: the data's statistics when the channels match, else per-image min-max."""
    v = v.detach().float().cpu()
    if v.shape[1] == len(mean):
        return (v * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)
    lo = v.amin(dim=(1, 2, 3), keepdim=True)
    hi = v.amax(dim=(1, 2, 3), keepdim=True)
    return ((v - lo) / (hi - lo).clamp_min(1e-6))[:, :3]


# ----------------------------------------------------------------------------------------------- sections
def s_summary(ctx: RunContext, s: Section, opts: dict[str, Any]) -> None:
    if ctx.info is None:
        s.note("no run.json: the run has not finished (or was interrupted); see the curves for its progress")
    else:
        s.parts.append(table(["key", "value"], [[k, v] for k, v in ctx.info.items()]))


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
    n = opts["preview"]
    x = images_at(b.data.train, range(min(n, b.data.train.num_images)))
    gen = torch.Generator(device=b.device).manual_seed(0)
    views = b.views(x.to(b.device), gen)
    rows = [("original", list(x))] + [(f"view {i + 1}", list(unnormalise(v, b.data.mean, b.data.std)))
                                      for i, v in enumerate(views)]
    name = getattr(b.views, "names", None) or ctx.config.get("augment", {}).get("preset") or \
        type(b.method).default_augment
    name = " + ".join(name) if isinstance(name, list) else name
    p = ctx.png(plots.image_grid(rows, title=f"Views as the method saw them (preset: {name})"), "augmentations")
    s.image(p, f"{len(views)} views per image, un-normalised for display")


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
    s.image(ctx.png(fig, "tsne"), "L2-normalised pooled features; colours are labels (never seen in pretraining)")


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
        marks = [None] * k if wrong_mask is None else ["red" if w else None for w in wrong_mask[i].tolist()]
        borders.append(["black"] + marks)
    wrong, total = (0, 0) if wrong_mask is None else (int(wrong_mask.sum()), wrong_mask.numel())
    fig = plots.image_grid(rows, title=f"Top-{k} neighbours (cosine) among {ftr.shape[0]} train images",
                           borders=borders, col_titles=["query"] + [f"#{j + 1}" for j in range(k)])
    cap = "queries spread over the test split; red frame: a neighbour of another class"
    if total:
        cap += f" ({wrong}/{total} = {100 * wrong / total:.0f}% wrong-class)"
    s.image(ctx.png(fig, "retrieval"), cap)


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
    s.parts.append('<p class="caption">last block, CLS → patch attention: the image, the mean over heads, '
                   'then each head</p>')


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
    s.parts.append(table(["protocol", "metric", "trained %", "random-init %", "gain", "labels", "s"], rows))
    p = ctx.evals.get("protocol", {})
    s.parts.append(f'<p class="caption">checkpoint {p.get("checkpoint", "?")} (step {p.get("step", "?")}), '
                   f'evaluated on {p.get("eval_data", "?")}; baseline: {p.get("baseline", "?")}</p>')


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


def report_run(run_dir: str | Path, out: str | Path | None = None, *, data: str | None = None,
               device: str = "cpu", **options: Any) -> Path:
    """Write the run's report page (default ``RUN/report.html``, PNGs in ``RUN/report/``); returns its path.

    ``options``: preview (images in the augmentation grid), tsne_points, queries, neighbours, retrieval_pool
    (train images searched), attention (images with attention maps).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from ..data import DataError

        raise DataError(f"run directory not found: {run_dir}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown report options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    out = Path(out) if out is not None else run_dir / "report.html"
    ctx = RunContext(run_dir, out.with_suffix(""), data, device)
    ctx.png_dir.mkdir(parents=True, exist_ok=True)
    ctx.load()
    sections = []
    for sid in SECTIONS:
        s = Section(sid, TITLES[sid])
        try:
            BUILDERS[sid](ctx, s, opts)
        except Exception as e:  # a report never crashes: the section says what went wrong
            s.note(f"could not make this section: {type(e).__name__}: {e}")
            s.pre("".join(traceback.format_exception_only(type(e), e)))
        sections.append(s)
    method = (ctx.info or {}).get("method") or ((ctx.config or {}).get("method") or {}).get("name", "?")
    out.write_text(render_page(f"Run report: {run_dir.name}", sections, f"{run_dir} · method {method}"))
    return out


# ------------------------------------------------------------------------------------------- comparison
def _looks_like_run(p: Path) -> bool:
    return any((p / n).exists() for n in ("config.yaml", "metrics.jsonl", "run.json", "eval.json", "checkpoints"))


def report_compare(run_dirs: Sequence[str | Path], out: str | Path = "report-compare.html") -> Path:
    """One page across runs: the compare table (evaluation/compare.py) and overlaid curves."""
    from ..evaluation.compare import load_runs, to_markdown

    dirs = [Path(p) for p in run_dirs if Path(p).is_dir()]
    runs = [p for p in dirs if _looks_like_run(p)] or dirs
    rows = load_runs(runs)  # raises naming the paths when none is a directory
    out = Path(out)
    png_dir = out.with_suffix("")
    png_dir.mkdir(parents=True, exist_ok=True)
    records = {p.name: read_metrics(p / "metrics.jsonl") for p in runs}
    table_s = Section("compare", "Comparison table")
    table_s.parts.append(markdown_table(to_markdown(rows)))
    sections = [table_s]
    for sid, title, key, x, ylabel, logy in (
            ("loss", "Training loss", "loss", "step", "loss", False),
            ("knn", "Online kNN", "knn_top1", "epoch", "kNN top-1", False),
            ("lr", "Learning rate", "lr", "step", "learning rate", False),
            ("rankme", "RankMe (collapse monitor)", "rankme", "step", "RankMe", False)):
        s = Section(sid, title)
        try:
            fig = plots.plot_overlay({n: plots._series(r, key, x) for n, r in records.items()}, title=title,
                                     xlabel=x, ylabel=ylabel, logy=logy)
            if fig is None:
                s.note(f"no run has '{key}' records in metrics.jsonl")
            else:
                s.image(plots.save_png(fig, png_dir / f"{sid}.png"))
        except Exception as e:
            s.note(f"could not make this section: {type(e).__name__}: {e}")
        sections.append(s)
    missing = [p.name for p in runs if not records[p.name]]
    if missing:
        sections[1].note(f"no metrics.jsonl records for: {', '.join(missing)}")
    out.write_text(render_page(f"Comparison of {len(runs)} runs", sections, ", ".join(str(p) for p in runs)))
    return out
