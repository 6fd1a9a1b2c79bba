"""A classifier a user keeps: a pretrained encoder plus a head trained on labelled images, saved as a folder.

``finetune`` trains with the evaluation protocols' own loop (:func:`selfsup.evaluation.trainloop.train_classifier`,
crop + flip, SGD with Nesterov momentum, cosine) and their defaults: ``linear`` is the ``linear-aug`` protocol
(frozen encoder, linear head), ``mlp`` the same with the ``mlp`` probe's Linear-ReLU-Linear head, ``finetune`` the
``finetune`` protocol (encoder and linear head trained, the encoder at its own learning rate). The folder holds

- ``model.safetensors``: the encoder's weights under ``backbone.`` and the head's under ``head.``;
- ``classifier.json``: ``format``, class names, preprocessing (image size, channels, mean/std, the centred-square
  resize), the head (kind, sizes), the encoder (its run configuration, data shape, source, checkpoint step) and
  what training did (epochs, images, test top-1 when ``--test`` was given).

Loading rebuilds the encoder from the saved run configuration and reads only tensors (safetensors) and JSON: no
code is executed. ``predict`` writes ``file, predicted, confidence`` and the top-k classes with probabilities.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataError, ImageDataset, load_dataset
from ..data.ids import split_ids
from ..errors import CheckpointError, ConfigError

FORMAT = "selfsup-classifier"
VERSION = 1
HEADS = ("linear", "mlp", "finetune")
WEIGHTS, META = "model.safetensors", "classifier.json"
PROTOCOL_OF_HEAD = {"linear": "linear-aug", "mlp": "linear-aug", "finetune": "finetune"}  # whose defaults
MLP_HIDDEN = 512  # the mlp probe's default width


@dataclass
class Classifier:
    backbone: nn.Module
    head: nn.Module
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)`` of uint8 images ``(B, C, H, W)`` already at the classifier's size."""
        from ..augment.pipeline import eval_view

        pre = self.meta["preprocessing"]
        view = eval_view(int(pre["image_size"]), tuple(pre["mean"]), tuple(pre["std"]))
        dev = next(self.head.parameters()).device
        return self.head(self.backbone(view(images.to(dev))).float()).softmax(dim=1).cpu()


def load_source_encoder(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The evaluated encoder of a run directory (newest readable checkpoint) and what rebuilds it.

    The one place that turns ``SOURCE`` into an encoder: swap it for a general loader (exports, backbone names)
    without touching the rest.
    """
    from ..engine.run_access import load_run_checkpoint, rebuild_method, saved_config

    src = Path(source)
    if not src.is_dir():
        raise DataError(f"{src}: not a run directory (finetune starts from a pretrained run)" if src.exists()
                        else f"source run directory not found: {src}")
    ckpt_path, ckpt = load_run_checkpoint(src)
    cfg = saved_config(ckpt, ckpt_path)
    info = ckpt.get("data")
    if info is None:
        raise CheckpointError(f"{ckpt_path}: the checkpoint does not record its data's shape (written by an older "
                              "selfsup); re-save it by resuming the run")
    encoder = rebuild_method(ckpt, ckpt_path).eval_backbone()
    return encoder, {"run_config": cfg.to_dict(), "data": {k: info[k] for k in ("channels", "image_size", "num_train")},
                     "source": str(src), "checkpoint": ckpt_path.name, "step": int(ckpt["step"]),
                     "name": cfg.backbone.name, "in_channels": int(encoder.in_channels),
                     "num_features": int(encoder.num_features)}


def _rebuild_encoder(enc: dict[str, Any], where: Path) -> nn.Module:
    """The encoder described by ``classifier.json`` (weights not loaded)."""
    from ..config import build_run_config
    from ..engine.build import build_method_for

    try:
        cfg = build_run_config(enc["run_config"])
        d = enc["data"]
        return build_method_for(cfg, int(d["channels"]), int(d["image_size"][0]), int(d["num_train"])).eval_backbone()
    except (ConfigError, KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"{where}: its encoder description does not build a model ({type(e).__name__}: "
                        f"{str(e)[:160]})") from None


def make_head(kind: str, num_features: int, num_classes: int) -> nn.Module:
    if kind == "mlp":
        from ..heads.mlp import mlp

        return mlp([num_features, MLP_HIDDEN, num_classes], norm=None)
    return nn.Linear(num_features, num_classes)


def _labelled(data: str, test: str | None, size: int, channels: int) -> tuple[ImageDataset, str | None]:
    """The labelled data at the encoder's size and channels (1 ↔ 3 converted), checked for >= 2 classes."""
    from ..evaluation.transfer import adapt_channels

    ds = load_dataset(data, size, test_path=test)
    if ds.train.labels is None:
        raise DataError(f"{data}: finetune needs labelled images (class subfolders, or y_train in an .npz)")
    used = torch.unique(ds.train.labels)
    if used.numel() < 2:
        raise DataError(f"{data}: a classifier needs at least 2 classes, found {used.numel()} "
                        f"({', '.join(ds.classes[:1]) or 'one label'})")
    if test is not None and (ds.test is None or ds.test.labels is None):
        raise DataError(f"{test}: --test needs labelled images")
    if test is None:
        ds.test = None  # an .npz's own test split is used only when asked for with --test
    return adapt_channels(ds, channels)


def finetune(source: str | Path, data: str, out: str | Path, *, test: str | None = None, head: str = "linear",
             epochs: int | None = None, batch_size: int | None = None, device: str = "auto", seed: int = 0,
             quiet: bool = False) -> dict[str, Any]:
    """Train a classifier on ``data`` from the encoder of ``source`` and save it in ``out``; returns its metadata."""
    from ..engine.build import resolve_device
    from ..engine.run_access import check_writable
    from ..evaluation.trainloop import train_classifier
    from ..registry import EVALUATORS

    if head not in HEADS:
        raise ConfigError(f"--head '{head}' is not a classifier head (known: {', '.join(HEADS)})")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out)
    _check_out(out)
    check_writable(out / META, "the classifier")
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    say(f"finetune: loading the encoder of {source}")
    encoder, enc = load_source_encoder(source)
    size = int(enc["data"]["image_size"][0])
    say(f"finetune: loading {data} at {size} px")
    ds, conversion = _labelled(data, test, size, enc["in_channels"])
    opts = dict(EVALUATORS.entry(PROTOCOL_OF_HEAD[head]).meta["options"])
    epochs = epochs or int(opts["epochs"])
    num_classes = max(len(ds.classes), int(ds.train.labels.max()) + 1)  # type: ignore[union-attr]
    torch.manual_seed(seed)
    head_module = make_head(head, enc["num_features"], num_classes)
    dev = resolve_device(device)
    say(f"finetune: {head} head, {ds.train.num_images} images of {num_classes} classes, {epochs} epochs on {dev}")
    r = train_classifier(encoder, head_module, ds.train, ds.test, ds.mean, ds.std, dev, epochs=epochs,
                         lr_head=float(opts["lr_head"]),
                         lr_backbone=float(opts["lr_backbone"]) if head == "finetune" else None,
                         batch_size=batch_size or int(opts["batch_size"]), weight_decay=float(opts["weight_decay"]),
                         augment=bool(opts["augment"]), crop_scale_min=float(opts["crop_scale_min"]), seed=seed)
    classes = list(ds.classes) if len(ds.classes) >= num_classes else [str(i) for i in range(num_classes)]
    meta = {"format": FORMAT, "version": VERSION, "classes": classes,
            "preprocessing": {"image_size": size, "channels": int(enc["in_channels"]), "mean": list(ds.mean),
                              "std": list(ds.std), "resize": "centred square crop, bilinear resize",
                              "channel_conversion": conversion or "none"},
            "head": {"kind": head, "num_features": enc["num_features"], "num_classes": num_classes,
                     "hidden_dim": MLP_HIDDEN if head == "mlp" else None},
            "encoder": enc,
            "training": {"data": data, "test": test, "images": ds.train.num_images, "epochs": epochs,
                         "protocol_defaults": PROTOCOL_OF_HEAD[head], "train_loss": round(r["train_loss"], 4),
                         "steps": r["steps"], "test_top1": r["top1"], "seed": seed}}
    save_classifier(out, encoder, head_module, meta)
    top1 = f", test top-1 {100 * r['top1']:.1f} %" if r["top1"] is not None else ""
    say(f"finetune: saved → {out}{top1}")
    return meta


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; a classifier is saved as a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / META).exists():
        raise DataError(f"--out {out} is a folder with other files; give a new or empty folder (or a classifier "
                        "folder to replace)")


def save_classifier(out: Path, encoder: nn.Module, head: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    weights = {f"backbone.{k}": v for k, v in encoder.state_dict().items()}
    weights.update({f"head.{k}": v for k, v in head.state_dict().items()})
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt", FORMAT: str(VERSION)})
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """A classifier folder written by :func:`finetune`; one line naming the folder when it is missing or damaged."""
    d = Path(path)
    if not d.is_dir():
        raise DataError(f"classifier folder not found: {d}")
    meta = _read_meta(d)
    encoder = _rebuild_encoder(meta["encoder"], d)
    h = meta["head"]
    head = make_head(h["kind"], int(h["num_features"]), int(h["num_classes"]))
    state = _read_weights(d / WEIGHTS)
    for prefix, module in (("backbone.", encoder), ("head.", head)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)[:160]
            raise DataError(f"{d / WEIGHTS}: the weights do not fit the classifier ({prefix[:-1]}: {first[:160]})"
                            ) from None
    dev = torch.device(device)
    return Classifier(encoder.to(dev).eval(), head.to(dev).eval(), meta)


def _read_meta(d: Path) -> dict[str, Any]:
    p = d / META
    if not p.is_file():
        raise DataError(f"{d}: not a classifier folder (no {META}; make one with selfsup finetune)")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{p}: damaged ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{p}: not a selfsup classifier description (no \"format\": \"{FORMAT}\")")
    try:
        pre, h = meta["preprocessing"], meta["head"]
        ok = (h["kind"] in HEADS and int(h["num_classes"]) == len(meta["classes"]) >= 2 and int(h["num_features"]) > 0
              and len(pre["mean"]) == len(pre["std"]) == int(pre["channels"]) and int(pre["image_size"]) > 0
              and isinstance(meta["encoder"], dict))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"{p}: damaged (classes, head, preprocessing or encoder missing or inconsistent)")
    return meta


def _read_weights(p: Path) -> dict[str, torch.Tensor]:
    if not p.is_file():
        raise DataError(f"{p.parent}: the classifier's weights {p.name} are missing")
    try:
        from safetensors.torch import load_file

        return load_file(str(p))
    except ImportError:
        raise ConfigError("loading a classifier needs the safetensors package: pip install 'selfsup[use]'") from None
    except Exception as e:  # safetensors' SafetensorError, OSError: cut or foreign file
        raise DataError(f"{p}: damaged weights ({type(e).__name__}: {str(e)[:120]})") from None


def predict(classifier: str | Path, data: str, out: str | Path, *, top_k: int = 3, batch_size: int = 256,
            device: str = "auto", quiet: bool = False) -> int:
    """Classify every image of ``data`` and write ``out`` (CSV); returns the number of images."""
    from ..engine.build import resolve_device
    from ..engine.run_access import check_writable

    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    check_writable(Path(out), "the predictions")
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    clf = load_classifier(classifier, resolve_device(device))
    pre = clf.meta["preprocessing"]
    ds = load_dataset(data, int(pre["image_size"]))
    if ds.channels != int(pre["channels"]):
        raise DataError(f"{data}: {ds.channels}-channel images, but the classifier {classifier} takes "
                        f"{pre['channels']}-channel images")
    k = min(top_k, len(clf.classes))
    ids = split_ids(ds.train)
    say(f"predict: {ds.train.num_images} images of {data} with {classifier} ({len(clf.classes)} classes)")
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "predicted", "confidence"] + [c for i in range(1, k + 1) for c in (f"top{i}", f"p{i}")])
        for x, idx, _ in ds.train.batches(batch_size, shuffle=False):
            p, c = clf.probabilities(x).topk(k, dim=1)
            for row, i in enumerate(idx.tolist()):
                top = [v for j in range(k) for v in (clf.classes[int(c[row, j])], f"{float(p[row, j]):.4f}")]
                w.writerow([ids[i], top[0], top[1]] + top)
            n += len(idx)
    say(f"predict: wrote {n} predictions → {out}")
    return n
