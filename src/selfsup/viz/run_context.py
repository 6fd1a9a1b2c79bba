"""What a report reads from a run directory: ``metrics.jsonl``, ``run.json``, ``eval.json``, the config, the newest
checkpoint and, rebuilt from them on demand, the model, its data and its view pipeline (:class:`RunContext`).

This is the data-gathering half of the report; ``viz/sections.py`` turns it into sections and ``viz/html.py``
renders them. Nothing here writes HTML.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from . import plots


def _engine_builders():
    """``build_run`` and ``resolve_device``: the report's one import of the engine's model builder."""
    from ..engine.build import build_run, resolve_device

    return build_run, resolve_device


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; lines cut by a crash (or not UTF-8, not JSON) are skipped."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
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
    _feats: dict[tuple[str, int], Any] = field(default_factory=dict)

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
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                self.missing["config"] = f"unreadable config.yaml ({type(e).__name__})"
            if self.config is not None and not isinstance(self.config, dict):
                self.config, self.missing["config"] = None, "config.yaml is not a mapping of sections"
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

            build_run, resolve_device = _engine_builders()
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
