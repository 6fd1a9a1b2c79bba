"""The README's "Your own images" walkthrough runs as written, end to end, on a small generated folder:
pretrain on unlabelled photos → embed → near-duplicates → select what to label → finetune → predict.

Each ``selfsup`` line of the README block runs through the real command line, with only tiny sizes appended
(a few steps, a small backbone, small batches) and the selection budget fitted to the folder; the labelling
step the README leaves to the user is done here from the generated labels."""
from __future__ import annotations

import csv
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import make_blobs

from selfsup.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = README.read_text().split("## Your own images", 1)[1].split("\n## ", 1)[0]
BLOCK = re.search(r"```console\n(.*?)```", SECTION, flags=re.S)
TINY = {  # appended to each command: later flags override the README's
    "pretrain": ["--max-steps", "3", "--backbone", "convnet", "--width", "0.25", "--image-size", "16",
                 "--batch-size", "8", "--quiet"],
    "embed": ["--batch-size", "8", "--workers", "1"],
    "finetune": ["--epochs", "1", "--batch-size", "8", "--quiet"],
    "predict": ["--batch-size", "8", "--quiet"],
}


def commands() -> list[list[str]]:
    assert BLOCK, "README: the 'Your own images' section has no console block"
    lines = [ln.split("#", 1)[0].strip() for ln in BLOCK.group(1).splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("selfsup ")]


def write_photos(folder: Path, n: int, seed: int) -> dict[str, int]:
    """A flat folder of n blob images (no labels in the layout); returns file name → its hidden class."""
    from PIL import Image

    folder.mkdir(parents=True)
    ds = make_blobs(n=n, size=16, seed=seed)
    labels = {}
    for i in range(n):
        name = f"img{i:03d}.png"
        Image.fromarray(ds.train.images[i].permute(1, 2, 0).numpy()).save(folder / name)
        labels[name] = int(ds.train.labels[i])
    return labels


def label_the_selection(selection: Path, photos: Path, labels: dict[str, int], out: Path) -> None:
    """What the user does by hand: each selected file copied into ``out/<its class>/``."""
    ids = [ln.strip() for ln in selection.read_text().splitlines() if ln.strip()]
    assert ids and all(i in labels for i in ids), ids
    for i in ids:
        (out / f"class{labels[i]}").mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / i, out / f"class{labels[i]}" / i)


def test_the_walkthrough_has_every_step():
    assert [c[0] for c in commands()] == ["pretrain", "embed", "neighbors", "select", "finetune", "predict"]


def test_the_walkthrough_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    labels = write_photos(tmp_path / "photos", 40, seed=1)
    write_photos(tmp_path / "new_photos", 8, seed=2)
    for argv in commands():
        cmd = argv[0]
        if cmd == "select":  # the README's budget of 100 is for a real folder: 12 of these 40 images
            argv = [*argv[:argv.index("--budget")], "--budget", "12", *argv[argv.index("--budget") + 2:]]
        if cmd == "finetune":
            label_the_selection(tmp_path / "to_label.txt", tmp_path / "photos", labels, tmp_path / "labelled")
            if len(list((tmp_path / "labelled").iterdir())) < 2:
                pytest.fail("the selection holds a single class: a classifier needs two")
        rc = main([*argv, *TINY.get(cmd, [])])
        assert rc == 0, f"selfsup {' '.join(argv)}: {capsys.readouterr().err}"
    assert (tmp_path / "runs/photos/run.json").is_file()
    assert (tmp_path / "photos.npz").is_file() and (tmp_path / "duplicates.csv").is_file()
    assert "<html" in (tmp_path / "duplicates.html").read_text().lower()
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["predicted"].startswith("class") for r in rows)
