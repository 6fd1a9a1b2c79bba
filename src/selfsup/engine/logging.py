"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard when installed, a progress line."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, *, total_steps: int, tensorboard: bool = True, quiet: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0
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

    def progress(self, record: dict[str, Any], force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not (self.tty or force or now - self._last_print > 15):
            return
        self._last_print = now
        step = record.get("step", 0)
        pct = 100.0 * step / max(1, self.total_steps)
        extras = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                           if k not in ("step", "epoch", "loss", "lr", "images_per_s", "time_s")
                           and isinstance(v, (int, float)))
        line = (f"step {step}/{self.total_steps} ({pct:3.0f}%)  epoch {record.get('epoch', 0):.2f}  "
                f"loss {record.get('loss', float('nan')):.4f}  lr {record.get('lr', 0):.3g}  "
                f"{record.get('images_per_s', 0):.0f} img/s  {extras}")
        end = "\r" if self.tty and not force else "\n"
        print(line.ljust(100), end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)
        if self.tb is not None:
            self.tb.close()
