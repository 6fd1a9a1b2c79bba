"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard when installed, a progress line."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..progress import PlainBar, clock
from ..progress import bar as progress_bar
from .monitors import CollapseThresholds

SHOWN_ELSEWHERE = ("step", "epoch", "loss", "lr", "images_per_s", "time_s")


def _columns(record: dict[str, Any]) -> str:
    """The monitor columns of a progress line: ``epoch 0.5  loss 4.1  lr 0.1  190 img/s  rankme 12 ...``."""
    extras = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                       if k not in SHOWN_ELSEWHERE and isinstance(v, (int, float)))
    return (f"epoch {record.get('epoch', 0):.2f}  loss {record.get('loss', float('nan')):.4f}  "
            f"lr {record.get('lr', 0):.3g}  {record.get('images_per_s', 0):.0f} img/s  {extras}").rstrip()


def legend(record: dict[str, Any]) -> str:
    """One line saying what each column of the progress line is (printed once, before the first line)."""
    t = CollapseThresholds()
    known = {"emb_std": "embedding std", "emb_std_ratio": f"std × √D (collapsed < {t.std_ratio_min})",
             "rankme": f"effective rank (collapsed < {t.rankme_min})",
             "out_entropy": "output entropy", "out_entropy_ratio": f"entropy / log K (uniform > {t.entropy_ratio_max})",
             "out_marginal_entropy": "entropy of the mean output",
             "out_marginal_entropy_ratio": f"mean-output entropy / log K (one dim < {t.marginal_entropy_ratio_min})",
             "knn_top1": "online kNN top-1", "skipped_steps": "non-finite steps skipped"}
    parts = ["loss: mean over the logging window", "lr: learning rate", "img/s: training throughput"]
    own = "the method's own log"
    parts += [f"{k}: {known.get(k, own)}" for k, v in record.items()
              if k not in SHOWN_ELSEWHERE and isinstance(v, (int, float))]
    return "columns: " + "; ".join(parts)


class MetricsLogger:
    def __init__(self, run_dir: Path, *, total_steps: int, tensorboard: bool = True, quiet: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0
        self._t0: float | None = None  # the first step's time (elapsed and ETA of the plain line)
        self._legend_shown = False
        self.bar: Any = None  # the terminal's tqdm bar, made at the first step
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # tensorboard not installed: it is an optional extra
                self.tb = None

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def set_total(self, total_steps: int) -> None:
        """The run's new length (a time budget sized it): the bar and the lines follow."""
        self.total_steps = total_steps
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.refresh()

    def note(self, line: str) -> None:
        """One line for the user (e.g. the time-limit estimate), above the bar on a terminal."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def tick(self, step: int) -> None:
        """After every step: the terminal's bar moves (elapsed time and ETA); nothing is printed otherwise."""
        if self._t0 is None:
            self._t0 = time.perf_counter() - 1e-9  # (the first step's own time is not measured)
            first = True
        else:
            first = False
        if self.quiet or not self.tty:
            return
        if self.bar is None and first:
            self.bar = progress_bar(self.total_steps, "pretraining", unit="step", tty=True)
            if isinstance(self.bar, PlainBar):  # tqdm missing: the old carriage-return line instead
                self.bar = None
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def progress(self, record: dict[str, Any], force: bool = False) -> None:
        if self.quiet:
            return
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if not self._legend_shown:
            self._legend_shown = True
            self.note(legend(record))
        if self.bar is not None:
            self.bar.set_postfix_str(_columns(record), refresh=True)
            return
        now = time.monotonic()
        if not (self.tty or force or now - self._last_print > 15):
            return
        self._last_print = now
        step = record.get("step", 0)
        pct = 100.0 * step / max(1, self.total_steps)
        elapsed = time.perf_counter() - self._t0
        eta = clock(elapsed / step * (self.total_steps - step)) if step else "?"
        line = (f"step {step}/{self.total_steps} ({pct:3.0f}%)  elapsed {clock(elapsed)} ETA {eta}  "
                f"{_columns(record)}")
        end = "\r" if self.tty and not force else "\n"
        print(line.ljust(100), end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.tty and not self.quiet:
            print(file=sys.stderr)
        if self.tb is not None:
            self.tb.close()
