"""``selfsup report``: every section present, every image a decodable PNG, the page renders in headless
Chromium, plots are titled and labelled, and run directories missing pieces give notes instead of crashes."""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_blobs
from PIL import Image

from selfsup.api import pretrain
from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.evaluation.runner import evaluate_run
from selfsup.viz import plots
from selfsup.viz.report import SECTIONS, report_run, retrieve

FAST = {"tsne_points": 40, "retrieval_pool": 64, "queries": 3, "neighbours": 4, "preview": 4, "attention": 2}


class PageParser(HTMLParser):
    """Section ids, their headings and notes, and every <img> src."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.imgs: list[str] = []
        self._cur: str | None = None
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._cur = a["id"]
            self.sections[self._cur] = {"title": "", "notes": [], "imgs": 0}
        elif tag == "h2":
            self._in = "h2"
        elif tag == "p" and a.get("class") == "note":
            self._in = "note"
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
            if self._cur:
                self.sections[self._cur]["imgs"] += 1

    def handle_endtag(self, tag):
        if tag in ("h2", "p"):
            self._in = None

    def handle_data(self, data):
        if self._cur and self._in == "h2":
            self.sections[self._cur]["title"] += data
        elif self._cur and self._in == "note":
            self.sections[self._cur]["notes"].append(data)


def parse(path: Path) -> PageParser:
    p = PageParser()
    p.feed(path.read_text())
    return p


def assert_images_decode(page: PageParser) -> None:
    assert page.imgs
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()  # raises on a truncated or corrupt PNG
        assert img.format == "PNG" and min(img.size) > 10


def _npz(path: Path, n: int = 64) -> Path:
    d = make_blobs(n=n, size=16)
    np.savez(path, x_train=d.train.images.permute(0, 2, 3, 1).numpy(), y_train=d.train.labels.numpy(),
             x_test=d.test.images.permute(0, 2, 3, 1).numpy(), y_test=d.test.labels.numpy())
    return path


def _pretrain(tmp: Path, name: str, backbone: str, epochs: int, **train) -> Path:
    data = _npz(tmp / "blobs.npz") if not (tmp / "blobs.npz").exists() else tmp / "blobs.npz"
    cfg = build_run_config({"method": {"name": "simclr"}, "data": {"path": str(data)},
                            "backbone": {"name": backbone, "width": 0.25, "cifar_stem": backbone == "resnet18"},
                            "train": {"epochs": epochs, "batch_size": 16, "device": "cpu", "log_every": 1, **train}})
    pretrain(cfg, tmp / name, quiet=True)
    return tmp / name


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A ResNet run with metrics (online kNN included), a checkpoint and eval.json with knn + layers."""
    tmp = tmp_path_factory.mktemp("report")
    run = _pretrain(tmp, "resnet", "resnet18", 2, knn_every=1)
    evaluate_run(run, ["knn", "layers"], device="cpu", quiet=True, options={"layers.l2_grid": [1e-3]})
    return run


def test_full_report_has_every_section_and_every_image_decodes(full_run):
    out = report_run(full_run, **FAST)
    assert out == full_run / "report.html"
    page = parse(out)
    assert list(page.sections) == list(SECTIONS)
    assert all(s["title"] for s in page.sections.values())
    for sid in SECTIONS:
        if sid == "attention":  # a ResNet: the note says attention maps are for ViTs
            assert "ViT" in " ".join(page.sections[sid]["notes"])
            continue
        assert not page.sections[sid]["notes"], (sid, page.sections[sid]["notes"])
    for sid in ("curves", "knn", "monitors", "augmentations", "tsne", "retrieval", "layers"):
        assert page.sections[sid]["imgs"] >= 1, sid
        assert (full_run / "report" / f"{sid}.png").is_file()
    assert_images_decode(page)
    html = out.read_text()
    assert "random-init %" in html and "temperature" in html  # evaluation table and config


def _chromium() -> str:
    """The headless browser, or a skip: the test never installs software (CI installs chromium beforehand)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless browser check skipped: chromium is not installed (e.g. `apt-get install chromium`)")
    return exe


def test_report_renders_in_headless_chromium(full_run, tmp_path):
    exe = _chromium()
    page = full_run / "report.html"
    if not page.exists():
        report_run(full_run, **FAST)
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                    "--window-size=1200,3000", page.resolve().as_uri()], capture_output=True, timeout=120)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 3000)
    arr = np.asarray(img)
    assert arr.std() > 10  # text and plots, not a blank page
    assert (arr < 100).mean() > 0.005  # some dark pixels (text, lines)


def test_partial_run_gives_notes_not_a_crash(full_run, tmp_path):
    # only config and metrics: no checkpoint, run.json or eval.json
    run = tmp_path / "partial"
    run.mkdir()
    shutil.copy(full_run / "config.yaml", run)
    shutil.copy(full_run / "metrics.jsonl", run)
    (run / "metrics.jsonl").open("a").write('{"step": 99, "loss": 1.0, "l')  # a line cut by a crash
    page = parse(report_run(run, **FAST))
    assert list(page.sections) == list(SECTIONS)
    for sid in ("summary", "tsne", "retrieval", "attention", "evaluation", "layers"):
        assert page.sections[sid]["notes"], sid
    assert "checkpoint" in " ".join(page.sections["tsne"]["notes"])
    for sid in ("curves", "augmentations"):  # still made from metrics and config
        assert page.sections[sid]["imgs"] == 1 and not page.sections[sid]["notes"]
    assert_images_decode(page)

    empty = tmp_path / "empty"
    empty.mkdir()
    page = parse(report_run(empty))
    assert list(page.sections) == list(SECTIONS)
    assert all(s["notes"] for s in page.sections.values())
    assert not page.imgs


def test_vit_run_has_attention_maps(tmp_path):
    run = _pretrain(tmp_path, "vit", "vit-test", 1)
    page = parse(report_run(run, **FAST))
    assert page.sections["attention"]["imgs"] == 2 and not page.sections["attention"]["notes"]
    assert_images_decode(page)


def test_comparison_page_and_cli(full_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(full_run / "config.yaml", other)
    out = tmp_path / "cmp.html"
    assert main(["report", str(full_run), str(other), str(tmp_path / "not-a-dir"), "--out", str(out)]) == 0
    page = parse(out)
    assert list(page.sections) == ["compare", "loss", "knn", "lr", "rankme"]
    assert page.sections["loss"]["imgs"] == 1
    assert any("other" in n for n in page.sections["loss"]["notes"])  # the run without metrics is named
    assert_images_decode(page)
    html = out.read_text()
    assert "<table>" in html and full_run.name in html and "no eval.json" in html
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_retrieval_marks_wrong_class_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    ytr = torch.tensor([0, 1, 2, 2, 3])
    top, wrong = retrieve(train, ytr, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), torch.tensor([0, 2]), 3)
    assert top.tolist() == [[0, 1, 3], [2, 3, 1]]
    assert wrong.tolist() == [[False, True, True], [False, False, True]]
    assert retrieve(train, None, train[:1], None, 2)[1] is None


def test_report_of_a_study_cell_previews_its_transformations(full_run, tmp_path):
    cell = tmp_path / "cell"
    cell.mkdir()
    shutil.copy(full_run / "config.yaml", cell)
    (cell / "cell.json").write_text(json.dumps({"transforms": ["crop", "sobel"]}))
    page = parse(report_run(cell, **FAST))
    assert page.sections["augmentations"]["imgs"] == 1 and not page.sections["augmentations"]["notes"]
    from selfsup.viz.report import RunContext

    ctx = RunContext(cell, tmp_path / "png")
    ctx.load()
    assert ctx.built().views.names == ["crop", "sobel"]


def _check_labelled(fig):
    assert fig is not None
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        assert ax.get_title(), "an axis without a title"
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axis in '{ax.get_title()}'"
    plots.pyplot().close(fig)


def test_plots_have_titles_and_axis_labels(full_run):
    recs = [{"step": i, "epoch": i / 4, "loss": 5 - i / 10, "lr": 0.1, "emb_std_ratio": 0.5, "rankme": 9.0,
             "out_entropy_ratio": 0.5} for i in range(1, 9)] + [{"step": 8, "epoch": 2.0, "knn_top1": 0.4}]
    for fig in (plots.plot_curves(recs), plots.plot_knn(recs), plots.plot_monitors(recs),
                plots.plot_overlay({"a": ([1, 2], [3, 2]), "b": ([1, 2], [4, 1])}, title="t", xlabel="x", ylabel="y"),
                plots.plot_embedding(np.random.rand(20, 2), np.arange(20) % 3, ["a", "b", "c"], title="t-SNE"),
                plots.heatmap([[1, 2], [2, float("nan")]], ["a", "b"], ["a", "b"], title="h", xlabel="x",
                              ylabel="y", cbar="c"),
                plots.plot_sweep([0.1, 0.5], {"knn": [1, 2]}, title="s", xlabel="τ", ylabel="top-1", logx=True),
                plots.plot_grouped_bars(["none", "mlp"], {"h": [1, 2], "z": [1, 1]}, title="b", xlabel="head",
                                        ylabel="top-1")):
        _check_labelled(fig)
    for fig in (plots.plot_sweep([0.1, 0.5], {"knn": [1, 2]}, title="s", xlabel="τ", ylabel="top-1",
                                 refs={"random init knn": 0.7}),
                plots.plot_grouped_bars(["a"], {"h": [1]}, title="b", xlabel="x", ylabel="y",
                                        refs={"random init knn": 0.7})):
        ax = fig.axes[0]
        labels = ax.get_legend_handles_labels()[1]
        assert "random init knn" in labels and any(list(ln.get_ydata()) == [0.7, 0.7] for ln in ax.get_lines())
        plots.pyplot().close(fig)
    assert len(plots.plot_monitors(recs).axes) == 3  # only the monitors present
    assert plots.plot_curves([]) is None and plots.plot_knn(recs[:3]) is None
    grid = plots.image_grid([("original", list(torch.zeros(3, 3, 8, 8, dtype=torch.uint8))),
                             ("view 1", list(torch.rand(3, 1, 8, 8)))], title="views",
                            borders=[[None] * 3, ["red", None, None]])
    assert grid._suptitle.get_text() == "views"
    assert [ax.get_ylabel() for ax in grid.axes[::3]] == ["original", "view 1"]
    assert grid.axes[3].spines["left"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)  # the red frame
    plots.pyplot().close(grid)
    cfg = yaml.safe_load((full_run / "config.yaml").read_text())
    assert cfg["method"]["name"] == "simclr"
