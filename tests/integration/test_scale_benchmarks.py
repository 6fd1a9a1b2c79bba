"""benchmarks/loader.py and benchmarks/time_to_accuracy.py run end to end on tiny data (--dry-run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_loader_benchmark_dry_run(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    results = tmp_path / "rows.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--dry-run", "--data",
                        str(tmp_path / "none.npz"), "--out", str(tmp_path / "data"), "--results", str(results)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    readers = {row["reader"] for row in rows}
    assert {"torchvision", "torchvision x2", "selfsup whole", "selfsup square", "selfsup shards"} <= readers
    loading = [row for row in rows if "check" not in row]
    assert all(row["images_per_s"] > 0 and row["px"] == 16 for row in loading)
    train = [row for row in rows if row.get("check") == "train"]  # the data-bound check: memory, then shards
    assert [row["reader"] for row in train] == ["in memory", "shards"] and "vs_in_memory" in train[1]
    assert "| 40x30 | 16 |" in r.stdout and "whole ÷ torchvision" in r.stdout


def _time_to_accuracy_dry_run(tmp_path: Path, data: Path, sides: str) -> dict:
    """``time_to_accuracy.py --dry-run --sides SIDES`` on ``data``: its one JSON row."""
    results = tmp_path / "tta.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--dry-run", "--sides",
                        sides, "--data", str(data), "--out", str(tmp_path / "runs"), "--results", str(results)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(results.read_text().splitlines()[0])


def test_time_to_accuracy_dry_run_and_interpolation(tmp_path: Path, blobs_npz: Path) -> None:
    """The selfsup side trains, keeps a checkpoint per probe and evaluates each (lightly is the bench extra)."""
    row = _time_to_accuracy_dry_run(tmp_path, blobs_npz, "selfsup")
    curve = row["selfsup"]["curve"]
    assert len(curve) == 2 and all(0 <= v <= 1 for _, v in curve)  # checkpoints at steps 2 and 4
    assert curve[0][0] < curve[1][0] and row["selfsup"]["steps"] == 4
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from time_to_accuracy import time_to

    assert time_to(0.5, [(60.0, 0.3), (120.0, 0.7)]) == 90.0
    assert time_to(0.2, [(60.0, 0.3)]) == 60.0 and time_to(0.9, [(60.0, 0.3)]) is None


def test_time_to_accuracy_lightly_side_dry_run(tmp_path: Path, blobs_npz: Path) -> None:
    """lightly's SimCLR side trains a few steps on the views its own transform makes (the bench extra)."""
    pytest.importorskip("lightly")
    row = _time_to_accuracy_dry_run(tmp_path, blobs_npz, "selfsup,lightly")
    assert row["lightly"]["steps"] == 4 and all(0 <= v <= 1 for _, v in row["lightly"]["curve"])
    assert row["target_knn"] == row["lightly"]["curve"][-1][1] and "ratio" in row


def test_scaling_plot_averages_seeds_per_budget(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    def row(m, budget, knn, over=()):
        return {"method": m, "budget_min": budget, "knn_top1": knn, "linear_top1": knn + 0.02, "images_per_s": 100.0,
                "epochs": budget / 5, "baseline_knn_top1": 0.28, "overrides": list(over)}

    rows = [row("simclr", 5, 0.40), row("simclr", 5, 0.42), row("simclr", 10, 0.45),
            row("simclr", 10, 0.50, ["data.image_size=24"]), row("dcl", 10, 0.44)]
    res = tmp_path / "rows.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "fig" / "scale.png"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling_plot.py"), "--results", str(res),
                        "--label", "simclr=simclr", "--label", "small=simclr:data.image_size=24", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.with_suffix(".md").read_text()
    assert "| simclr | 5 | 2 | 41.0 ± 1.4 % |" in md and "| simclr | 10 | 1 | 45.0 % |" in md
    assert "| small | 10 | 1 | 50.0 % |" in md and out.read_bytes()[:4] == b"\x89PNG"
