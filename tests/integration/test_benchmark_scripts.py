"""The small benchmark helpers that docs/ figures come from run on hand-made inputs."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def test_vs_lightly_rejects_an_unknown_precision() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_lightly.py"), "--precision", "fp32,fp16"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--precision: fp32 and/or bf16" in r.stderr


def test_throughput_bf16_variant_runs() -> None:
    """The bf16 variant autocasts and reports the bf16 matmul peak (tiny sizes: a smoke test, not a measurement)."""
    code = ("import sys, torch; sys.argv = ['t', '--batch-size', '4', '--steps', '1', '--repeats', '1', "
            "'--variants', 'channels_last+bf16', '--width', '0.125']; import runpy; "
            "t = runpy.run_path('benchmarks/throughput.py', run_name='throughput'); "
            "t['matmul_gflops'].__defaults__ = ((64,), 1, torch.float32); t['main']()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert "bf16_peak_gflops" in summary and summary["variants"]["channels_last+bf16"]["images_per_s"] > 0


def test_precision_cell_script_trains_one_cell(tmp_path: Path, monkeypatch) -> None:
    precision_cell = _script("precision_cell")
    from selfsup.studies import base

    monkeypatch.setattr(base.Study, "__init__", _tiny_study_init(base.Study.__init__))
    c = precision_cell.cell("mnist5k", tmp_path, "fp32", 2)
    assert c["steps"] == 2 and 0 <= c["knn_top1"] <= 1
    assert "precision: fp32" in (tmp_path / "fp32" / "cells" / "t0.2" / "config.yaml").read_text()


def _script(name: str):
    """A benchmark script loaded as a module from its file (benchmarks/ is not a package on the path)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the script's own imports of itself (dataclasses, pickling) find it
    spec.loader.exec_module(module)
    return module


def _tiny_study_init(init):
    """Study.__init__ on tiny settings (a small convnet, batch 16, few probe images) whatever the script asks."""
    def tiny(self, settings, dataset=None):
        settings.backbone, settings.batch_size, settings.eval_train, settings.eval_test = "convnet", 16, 64, 32
        settings.device, settings.quiet = "cpu", True
        return init(self, settings, dataset)
    return tiny


def test_selection_benchmark_smoke_on_a_tiny_run(tmp_path: Path, monkeypatch) -> None:
    """Embeds, selects with each strategy, runs semi on each selection and on random stratified subsets, writes the
    table (tiny data subset: a smoke test of the script, not a measurement)."""
    import runpy

    from conftest import make_blobs, save_npz

    from selfsup.api import pretrain
    from selfsup.config import build_run_config

    save_npz(make_blobs(n=48, size=16), tmp_path / "blobs.npz")
    cfg = build_run_config({"method": {"name": "simclr", "proj_hidden_dim": 16, "proj_dim": 8},
                            "data": {"path": str(tmp_path / "blobs.npz")}, "backbone": {"name": "convnet", "width": 0.25},
                            "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "log_every": 1}})
    pretrain(cfg, tmp_path / "run", quiet=True)
    out = tmp_path / "sel"
    monkeypatch.setattr(sys, "argv", ["s", str(tmp_path / "run"), "--fractions", "0.25", "--seeds", "2", "--subset",
                                      "40", "--strategies", "kcenter,random", "--device", "cpu", "--out", str(out)])
    runpy.run_path(str(ROOT / "benchmarks" / "selection_cifar10.py"), run_name="__main__")
    table = (out / "selection.md").read_text()
    assert table.startswith("| strategy | 25 % labels: top-1 | Δ vs random | beats random? |")
    assert "| random stratified | " in table and "| kcenter | " in table and "(n=10)" in table
    res = json.loads((out / "selection.json").read_text())
    assert res["train_images"] == 40 and len(res["results"]["0.25"]["kcenter"]["values"]) == 2
    assert (out / "select-kcenter-0.25-seed1.txt").read_text().count("\n") == 10
    assert np_load_ids(out / "embeddings.npz") == [f"train/{i}" for i in range(40)]


def np_load_ids(path: Path) -> list[str]:
    import numpy as np

    return np.load(path)["ids"].tolist()


GPU_SCRIPT = ROOT / "benchmarks" / "gpu.py"


def test_gpu_benchmark_dry_run_writes_a_row_per_data_path_and_the_table(tmp_path: Path) -> None:
    """--dry-run: the GPU benchmark's code end to end on the CPU (synthetic 16-px data, ResNet-18 width 0.125,
    batch 16, a few steps, bf16 autocast and channels_last, no compile): a JSON line per data path, the Markdown
    table and the comparison with lightly's table (a smoke test of the script, not a measurement)."""
    results = tmp_path / "gpu.jsonl"
    r = subprocess.run([sys.executable, str(GPU_SCRIPT), "--dry-run", "--out", str(tmp_path / "out"),
                        "--results", str(results)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["data_path"] for row in rows] == ["device", "pinned", "pageable", "shards"]
    full, *paths = rows
    assert full["row"] == "full" and full["stopped"] == "done" and full["steps"] == 8 and 0 <= full["knn_top1"] <= 1
    assert (full["backbone"], full["batch_size"], full["train_images"]) == ("resnet18 w0.125", 16, 64)
    assert (full["precision"], full["channels_last"], full["compile"]) == ("bf16", True, False)
    assert all(p["row"] == "data path" and p["stopped"] == "max_steps" and p["steps"] == 4 and p["knn_top1"] is None
               for p in paths)
    assert all(row["images_per_s"] > 0 and row["steady_from_step"] == 2 and row["peak_gpu_mem_gib"] is None
               and row["dry_run"] and row["torch"] and row["cpu"] for row in rows)
    assert "| row | data path | images/s (steady) | × lightly's 1,900 | peak GPU memory |" in r.stdout
    assert "| full run | device | " in r.stdout and "| data path | pinned | " in r.stdout
    assert "| data path | pageable | " in r.stdout and "| data path | shards | " in r.stdout and "DRY RUN" in r.stdout
    assert "vs lightly's CIFAR-10 table" in r.stdout and "vs 87.1 min" in r.stdout and "Goal (" in r.stdout


def test_gpu_benchmark_without_cuda_says_so_in_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run for real")
    r = subprocess.run([sys.executable, str(GPU_SCRIPT)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "CUDA" in r.stderr and "--dry-run" in r.stderr


def test_gpu_benchmark_names_the_data_paths_it_has() -> None:
    r = subprocess.run([sys.executable, str(GPU_SCRIPT), "--dry-run", "--data-path", "device,nvme"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "'nvme' is not a data path; choose from device, pinned, pageable, shards" in r.stderr


def test_pretrain_cifar10_takes_a_preset_and_records_it(tmp_path: Path, blobs_npz: Path) -> None:
    """``--config speedrun-cpu``: the preset's method and views reach the run, and the JSON row names the preset."""
    results = tmp_path / "rows.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pretrain_cifar10.py"), "--config", "speedrun-cpu",
                        "--data", str(blobs_npz), "--epochs", "1", "--batch-size", "8", "--no-compile", "--out",
                        str(tmp_path / "run"), "--results", str(results)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(results.read_text().splitlines()[0])
    assert row["method"] == "simclr" and row["config"] == "speedrun-cpu" and row["steps"] == 4
    assert 0 <= row["knn_top1"] <= 1 and "baseline_knn_top1" in row
    assert "size: 16" in (tmp_path / "run" / "config.yaml").read_text()
