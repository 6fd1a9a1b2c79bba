"""`selfsup compare`: one table across runs, tolerant of missing protocols, files and broken JSON."""
from __future__ import annotations

import csv
import io
import json

from selfsup.cli.main import main
from selfsup.evaluation.compare import compare_runs
from selfsup.evaluation.runner import aggregate


def _eval(protocols: dict[str, list[float]], base: dict[str, float]) -> dict:
    out = {p: aggregate(p, [{"top1": v, "params": {}, "labelled_images": 10} for v in vals], list(range(len(vals))), 1.0)
           for p, vals in protocols.items()}
    out["baseline"] = {p: aggregate(p, [{"top1": v}], [0], 1.0) for p, v in base.items()}
    out["protocol"] = {"method": "simclr", "backbone": "convnet"}
    return out


def _run(root, name, run_json=None, eval_json=None, raw_eval=None):
    d = root / name
    d.mkdir()
    if run_json is not None:
        (d / "run.json").write_text(json.dumps(run_json))
    if eval_json is not None:
        (d / "eval.json").write_text(json.dumps(eval_json))
    if raw_eval is not None:
        (d / "eval.json").write_text(raw_eval)
    return d


def test_compare_tolerates_missing_protocols_and_files(tmp_path):
    info = {"method": "simclr", "backbone": "resnet18", "width": 0.25, "epochs": 10, "wall_s": 600,
            "images_per_s": 300.0}
    runs = [
        _run(tmp_path, "a", info, _eval({"knn": [0.8, 0.82], "linear": [0.85]}, {"knn": 0.3, "linear": 0.35})),
        _run(tmp_path, "b", {**info, "method": "byol"}, _eval({"knn": [0.7]}, {})),  # no linear, no baseline
        _run(tmp_path, "c", info),  # not evaluated yet
        _run(tmp_path, "d", None, raw_eval="{broken"),
    ]
    (tmp_path / "notes.txt").write_text("not a run")
    md, table = compare_runs([*runs, tmp_path / "notes.txt"], out=tmp_path / "out" / "cmp")
    lines = md.splitlines()
    assert lines[0].startswith("| run | method | backbone | data | epochs | wall-clock (min) | images/s | knn | linear |")
    assert "| a | simclr | resnet18 w0.25 | - | 10 | 10.0 | 300.0 | 81.0 ± 1.4 (30.0) | 85.0 (35.0) |" in md
    assert "| b | byol | resnet18 w0.25 | - | 10 | 10.0 | 300.0 | 70.0 | - |" in md
    assert "- c: no eval.json" in md and "- d: no run.json, unreadable eval.json" in md
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["run"] for r in rows] == ["a", "b", "c", "d"]
    assert float(rows[0]["knn_std"]) > 0 and rows[0]["knn_seeds"] == "2" and rows[1]["linear_top1"] == ""
    assert (tmp_path / "out" / "cmp.md").read_text() == md and (tmp_path / "out" / "cmp.csv").read_text() == table


def test_compare_has_a_data_column_and_sums_the_wall_clock_of_resumes(tmp_path):
    info = {"method": "simclr", "backbone": "convnet", "data": "/photos/holiday/", "epochs": 2, "wall_s": 60,
            "wall_s_total": 300, "images_per_s": 10.0}
    npz = _run(tmp_path, "n", {**info, "data": "../shared/data/cifar10.npz", "wall_s_total": None, "wall_s": 120})
    md, table = compare_runs([_run(tmp_path, "f", info), npz], out=None)
    assert "| f | simclr | convnet | holiday | 2 | 5.0 | 10.0 |" in md  # 300 s over every launch, not the last 60
    assert "| n | simclr | convnet | cifar10.npz | 2 |" in md
    rows = list(csv.DictReader(io.StringIO(table)))
    assert rows[0]["data"] == "holiday" and rows[0]["wall_min"] == "5.0"


def test_compare_cli(tmp_path, capsys):
    run = _run(tmp_path, "a", {"method": "simclr"}, _eval({"knn": [0.5]}, {"knn": 0.2}))
    assert main(["compare", str(run), "--out", str(tmp_path / "t")]) == 0
    assert "50.0 (20.0)" in capsys.readouterr().out and (tmp_path / "t.csv").exists()
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_compare_markdown_escapes_table_syntax(tmp_path):
    import re

    hostile = "a|b<script>"
    run = _run(tmp_path, hostile, {"method": "x|y`z`", "backbone": "r\nn<img src=x onerror=alert(1)>"})
    plain = _run(tmp_path, "plain", {"method": "simclr"}, _eval({"knn|x": [0.5]}, {"knn|x": 0.2}))
    md, table = compare_runs([run, plain], out=None)
    rows = md.split("\n\n")[0].splitlines()
    assert len(rows) == 4 and all(r.startswith("| ") or r.startswith("|-") for r in rows)  # a newline starts no row
    cols = {len(re.split(r"(?<!\\)\|", r)) for r in rows}
    assert len(cols) == 1, rows  # an escaped "|" shifts no column
    assert "<script" not in md.lower() and "<img" not in md.lower() and "`" not in md.replace("\\`", "")
    assert rows[2].startswith("| a\\|b&lt;script&gt; |")
    assert "- a\\|b&lt;script&gt;: no eval.json" in md and "| knn\\|x |" in rows[0]
    assert list(csv.DictReader(io.StringIO(table)))[0]["run"] == hostile  # CSV quotes, it needs no escaping
