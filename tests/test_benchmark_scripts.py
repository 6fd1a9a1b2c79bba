"""The small benchmark helpers that docs/ figures come from run on hand-made inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["stem", "layer1", "layer2"]


def _eval_json(run: Path, method: str, values: list[float]) -> None:
    def res(vals: list[float]) -> dict:
        return {"params": {"stages": STAGES},
                "metrics": {f"top1@{s}": {"mean": v, "std": 0.0} for s, v in zip(STAGES, vals)}}

    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"protocol": {"method": method}, "layers": res(values),
                                               "baseline": {"layers": res([0.1, 0.1, 0.1])}}))


def test_layerwise_plot_across_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _eval_json(tmp_path / "a", "rotation", [0.3, 0.5, 0.4])
    out = tmp_path / "fig" / "layers.png"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layerwise.py"), str(tmp_path / "a"),
                        "--values", "simclr=stem:30,layer1:40,layer2:60", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = out.with_suffix(".md").read_text()
    assert "| rotation | 30.0 | 50.0 | 40.0 |" in table
    assert "| simclr (earlier run) | 30.0 | 40.0 | 60.0 |" in table
    assert "| random init | 10.0 | 10.0 | 10.0 |" in table


def test_layerwise_plot_names_a_run_without_layers(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "eval.json").write_text(json.dumps({"knn": {}}))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layerwise.py"), str(tmp_path / "r"),
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode != 0 and "--protocol layers" in r.stderr and str(tmp_path / "r") in r.stderr
