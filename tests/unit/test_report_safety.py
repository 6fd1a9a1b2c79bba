"""``selfsup report`` against hostile input: markup in a run's data path, class names, run name, eval.json and
config reaches the page only as escaped text (the page has no script of its own, so none may appear), and a bad
``--out`` or an unwritable run directory gives one line, not a traceback, and changes no file of the run."""
from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import make_blobs

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.engine.trainer import pretrain
from selfsup.evaluation.runner import evaluate_run
from selfsup.viz.report import report_compare, report_run

FAST = {"tsne_points": 40, "retrieval_pool": 64, "queries": 3, "neighbours": 4, "preview": 4, "attention": 2}
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
QUOTES = "\"'><svg onload=alert(1)>"
MARKUP = f"{SCRIPT}{IMG}{QUOTES}"
# every tag the report's templates write; anything else came from the data
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "nav", "a", "section", "img", "table",
        "thead", "tbody", "tr", "th", "td", "pre"}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def assert_no_live_markup(html: str) -> None:
    """No script, no event handler, no tag or attribute the templates do not write: hostile values are text."""
    assert "<script" not in html.lower()
    p = Tags()
    p.feed(html)
    for tag, attrs in p.tags:
        assert tag in TAGS, f"unexpected <{tag}> in the page"
        for name, value in attrs:
            assert name in ("lang", "charset", "href", "id", "class", "src", "alt"), f"attribute {name} on <{tag}>"
            if name == "src":
                assert (value or "").startswith("data:image/png;base64,"), "an image that is not self-contained"
            if name == "href":
                assert (value or "").startswith("#"), "a link that leaves the page"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A run whose every user-controlled string is markup: data directory, class names, run name, eval.json."""
    tmp = tmp_path_factory.mktemp("hostile")
    data_dir = tmp / MARKUP  # a path: "<script>alert(1)<" / "script><img src=x onerror=alert(1)>..."
    data_dir.mkdir(parents=True)
    d = make_blobs(n=64, size=16)
    npz = data_dir / "blobs.npz"
    np.savez(npz, x_train=d.train.images.permute(0, 2, 3, 1).numpy(), y_train=d.train.labels.numpy(),
             x_test=d.test.images.permute(0, 2, 3, 1).numpy(), y_test=d.test.labels.numpy(),
             classes=np.array([SCRIPT, IMG, QUOTES, "plain"]))
    run = tmp / "runs" / IMG.replace("/", "")  # a run directory name cannot hold "/"
    cfg = build_run_config({"method": {"name": "simclr"}, "data": {"path": str(npz)},
                            "backbone": {"name": "resnet18", "width": 0.25, "cifar_stem": True},
                            "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "log_every": 1}})
    pretrain(cfg, run, quiet=True)
    evaluate_run(run, ["knn"], eval_data=str(npz), device="cpu", quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    ev["protocol"].update(checkpoint=MARKUP, step=MARKUP, baseline=MARKUP)
    ev[MARKUP] = {"metrics": {MARKUP: {"mean": 0.5, "std": 0.0, "values": [0.5]}}, "labelled_images": MARKUP,
                  "seconds": MARKUP}
    (run / "eval.json").write_text(json.dumps(ev))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "collapse": MARKUP, MARKUP: MARKUP}))
    return run


def test_report_escapes_every_hostile_value(hostile_run):
    html = report_run(hostile_run, **FAST).read_text()
    assert_no_live_markup(html)
    ev = json.loads((hostile_run / "eval.json").read_text())
    assert MARKUP in ev["protocol"]["eval_data"]  # the data path reached eval.json...
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") >= 5  # ...and reaches the page as text: caption (4 fields), tables, config
    assert "&lt;img src=x onerror=alert(1)&gt;" in html.split("</h1>")[0]  # the run name, in the title


def test_comparison_page_escapes_every_hostile_value(hostile_run, tmp_path):
    other = tmp_path / "a|b<script>"
    other.mkdir()
    shutil.copy(hostile_run / "config.yaml", other)
    (other / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "lr": 0.1}) + "\n")
    html = report_compare([hostile_run, other], tmp_path / "cmp.html").read_text()
    assert_no_live_markup(html)
    assert "a|b&lt;script&gt;" in html
    p = Tags()
    p.feed(html)
    rows = [t for t, _ in p.tags if t == "tr"]
    assert len(rows) == 3  # the header and one row per run
    cells = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert len({c.count("<td>") + c.count("<th>") for c in cells}) == 1  # a "|" in a name shifts no column


def _snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(run.rglob("*"))}


def test_report_out_must_be_html(hostile_run, tmp_path, capsys):
    before = _snapshot(hostile_run)
    (tmp_path / "dir.html").mkdir()
    for out in (tmp_path / "page", tmp_path / "page.txt", hostile_run / "config.yaml", tmp_path / "dir.html"):
        assert main(["report", str(hostile_run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err and ".html" in err and "Traceback" not in err
        assert not (tmp_path / "page").exists() and not (tmp_path / "dir").exists()
    assert main(["report", str(hostile_run), str(hostile_run), "--out", str(tmp_path / "cmp")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    assert _snapshot(hostile_run) == before


def _unwritable(run: Path, monkeypatch) -> None:
    """The run directory refuses every write, as a read-only directory or mount does (chmod is no guard for
    root, so the refusal is simulated where Python writes: opening for writing, mkdir, rename)."""
    import builtins
    import io

    real_os_open, real_open, real_mkdir, real_replace = os.open, builtins.open, os.mkdir, os.replace
    root = str(run.resolve())

    def refuse(path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)) and str(Path(os.fsdecode(path)).resolve()).startswith(root):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            refuse(path)
        return real_os_open(path, flags, *a, **k)

    def fake_open(file, mode="r", *a, **k):
        if set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *a, **k)

    def fake_mkdir(path, *a, **k):
        refuse(path)
        return real_mkdir(path, *a, **k)

    def fake_replace(src, dst, *a, **k):
        refuse(dst)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)
    monkeypatch.setattr(os, "rename", fake_replace)


def test_report_into_read_only_run_directory(hostile_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "ro"
    shutil.copytree(hostile_run, run)
    for p in ("report", "report.html"):
        shutil.rmtree(run / p, ignore_errors=True) if (run / p).is_dir() else (run / p).unlink(missing_ok=True)
    before = _snapshot(run)
    _unwritable(run, monkeypatch)
    assert main(["report", str(run), "--tsne-points", "40", "--queries", "3", "--preview", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "cannot write" in err and str(run) in err
    monkeypatch.undo()
    assert _snapshot(run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_report_into_chmod_read_only_run_directory(hostile_run, tmp_path, capsys):
    run = tmp_path / "ro"
    shutil.copytree(hostile_run, run)
    before = _snapshot(run)
    run.chmod(0o555)
    try:
        assert main(["report", str(run), "--tsne-points", "40", "--queries", "3", "--preview", "4"]) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        run.chmod(0o755)
    assert _snapshot(run) == before


def test_report_out_under_a_file(hostile_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["report", str(hostile_run), "--out", str(blocker / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and blocker.read_text() == "x"
