"""A new user's photo folder: train/ + val/ read as two splits, eval against labelled folders, CPU-sized
defaults, the time-limit estimate, phase lines and progress, and the wall-clock of every launch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_blobs
from PIL import Image

from selfsup.cli.main import main
from selfsup.data import load_dataset

TINY = ["--backbone", "convnet", "--width", "0.25", "--batch-size", "8", "--device", "cpu"]


def write_folder(root: Path, n: int = 24, labelled: bool = True, seed: int = 0) -> Path:
    """``n`` 16-px blob PNGs: ``root/<class>/i.png`` (labelled) or ``root/i.png``."""
    ds = make_blobs(n=n, size=16, seed=seed)
    for i in range(n):
        y = int(ds.train.labels[i])
        d = root / f"class{y}" if labelled else root
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.train.images[i].permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    return root


def test_a_folder_of_train_and_val_is_two_splits_not_two_classes(tmp_path, capsys):
    root = tmp_path / "photos"
    write_folder(root / "train", 24)
    write_folder(root / "val", 12, seed=1)
    ds = load_dataset(str(root), 16)
    assert ds.classes == ["class0", "class1", "class2", "class3"]  # not ["train", "val"]
    assert ds.train.num_images == 24 and ds.test is not None and ds.test.num_images == 12
    assert ds.name == "photos"
    out = capsys.readouterr().out
    assert "train/ and val/" in out and "pretraining uses train/ only" in out


def test_train_and_test_subfolders_with_an_unlabelled_train_split(tmp_path):
    root = tmp_path / "p"
    write_folder(root / "train", 16, labelled=False)
    write_folder(root / "test", 8)
    ds = load_dataset(str(root), 16)
    assert ds.train.labels is None and ds.test is not None and ds.test.num_images == 8


def test_other_subfolders_are_still_classes(tmp_path):
    root = tmp_path / "p"
    for name in ("train", "val", "cats"):
        write_folder(root / name, 4, labelled=False)
    ds = load_dataset(str(root), 16)
    assert ds.classes == ["cats", "train", "val"] and ds.test is None


def test_eval_an_unlabelled_run_against_labelled_train_and_test_folders(tmp_path, capsys):
    photos = write_folder(tmp_path / "photos", 24, labelled=False)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(photos), "--image-size", "16", *TINY, "--max-steps", "2",
                 "--out", str(run), "--quiet"]) == 0
    train, test = write_folder(tmp_path / "lab-train", 24), write_folder(tmp_path / "lab-val", 12, seed=1)
    capsys.readouterr()
    assert main(["eval", str(run), "--eval-train", str(train), "--eval-test", str(test), "--protocol", "knn",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "selfsup: evaluating" in out and "knn" in out
    res = json.loads((run / "eval.json").read_text())
    assert res["protocol"]["test_images"] == 12 and res["protocol"]["train_images"] == 24
    assert res["protocol"]["eval_test"] == str(test) and "top1" in res["knn"]
    assert main(["eval", str(run), "--eval-test", str(test)]) == 2
    err = capsys.readouterr().err
    assert "--eval-test" in err and "needs --eval-train" in err


def test_pretrain_on_a_cpu_without_sizes_takes_the_cpu_preset_and_says_so(tmp_path, capsys):
    from selfsup.cli.config_args import config_from_args
    from selfsup.cli.main import build_parser

    photos = write_folder(tmp_path / "photos", 8, labelled=False)
    args = build_parser().parse_args(["pretrain", "--data", str(photos), "--device", "cpu", "--out", "x"])
    cfg = config_from_args(args, cpu_defaults=True)
    assert (cfg.backbone.width, cfg.backbone.cifar_stem, cfg.data.image_size, cfg.train.batch_size) == \
        (0.25, True, 32, 128)
    assert "cpu-folder" in capsys.readouterr().out
    args = build_parser().parse_args(["pretrain", "--data", str(photos), "--device", "cpu", "--width", "0.5",
                                      "--out", "x"])
    cfg = config_from_args(args, cpu_defaults=True)  # a size given: nothing else is chosen
    assert cfg.backbone.width == 0.5 and cfg.train.batch_size is None and "cpu-folder" not in capsys.readouterr().out
    npz_args = build_parser().parse_args(["pretrain", "--data", "mnist5k", "--device", "cpu", "--out", "x"])
    assert config_from_args(npz_args, cpu_defaults=True).data.image_size is None  # a dataset keeps its size
    cfg = config_from_args(build_parser().parse_args(["pretrain", "--config", "cpu-folder", "--out", "x"]))
    assert cfg.backbone.width == 0.25 and cfg.data.image_size == 32  # the preset the README points to


def test_a_time_limited_run_prints_phases_legend_and_estimate_and_sums_wall_clock(tmp_path, capsys):
    data = tmp_path / "blobs.npz"
    ds = make_blobs(n=32, size=16)
    np.savez(data, x_train=ds.train.images.permute(0, 2, 3, 1).numpy(), y_train=ds.train.labels.numpy())
    run = tmp_path / "run"
    argv = ["pretrain", "--data", str(data), *TINY, "--epochs", "3", "--time-limit-min", "10", "--out", str(run),
            "--set", "train.log_every=2", "--checkpoint-every", "4"]
    assert main(argv) == 0  # the configured 3 epochs of 4 steps fit in 10 minutes: nothing to warn about
    cap = capsys.readouterr()
    assert "selfsup: loading data" in cap.out and "selfsup: building simclr" in cap.out
    assert "selfsup: training from step 0" in cap.out
    assert "the configured run fits the budget: ~12 steps" in cap.err and "too short" not in cap.err
    assert cap.err.count("columns: loss") == 1 and "rankme: effective rank" in cap.err
    first = json.loads((run / "run.json").read_text())
    assert first["launches"] == 1 and first["wall_s_total"] == first["wall_s"]
    ckpt = sorted((run / "checkpoints").glob("step-*.pt"))[0]
    (run / "run.json").unlink()  # continue from the step-4 checkpoint as a requeued job would
    for c in sorted((run / "checkpoints").glob("step-*.pt"))[1:]:
        c.unlink()
    assert ckpt.name.startswith("step-")
    assert main([*argv, "--resume"]) == 0
    second = json.loads((run / "run.json").read_text())
    assert second["launches"] == 2 and second["wall_s_total"] > second["wall_s"]


# ------------------------------------------------------------------------------------------------ the report
def test_a_one_point_lr_curve_has_a_visible_marker():
    from selfsup.viz.plots import plot_curves, pyplot

    fig = plot_curves([{"step": 1, "loss": 2.0, "lr": 0.1}])
    lr_line = fig.axes[1].get_lines()[0]
    assert lr_line.get_marker() not in (None, "None", "", " ")  # a line of one point draws nothing
    pyplot().close(fig)


def test_monitor_plots_draw_the_collapse_thresholds():
    from selfsup.engine.monitors import CollapseThresholds
    from selfsup.viz.plots import plot_monitors, pyplot

    recs = [{"step": s, "emb_std_ratio": 0.5, "rankme": 9.0} for s in (10, 20)]
    fig = plot_monitors(recs)
    t = CollapseThresholds()
    levels = [{float(ln.get_ydata()[0]) for ln in ax.get_lines()[1:]} for ax in fig.axes]
    assert levels == [{t.std_ratio_min}, {t.rankme_min}]
    pyplot().close(fig)


def test_the_augmentation_preview_spans_the_classes():
    import torch

    from selfsup.viz.sections import preview_indices

    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)  # a folder's order: one class after the other
    idx = preview_indices(labels, 8, 30)
    assert len(idx) == 8 and {int(labels[i]) for i in idx} == {0, 1, 2} and len(set(idx)) == 8
    assert preview_indices(None, 4, 40) == [0, 10, 20, 30] and preview_indices(labels, 50, 30) == \
        sorted(preview_indices(labels, 50, 30), key=lambda i: (i % 10, i // 10))


# ------------------------------------------------------------------------------------------------ progress
def test_progress_is_a_tqdm_bar_on_a_terminal_and_plain_lines_with_eta_elsewhere(monkeypatch, capsys):
    import tqdm

    import selfsup.progress as P

    b = P.bar(10, "features", tty=True)
    assert isinstance(b, tqdm.tqdm)
    b.close()
    monkeypatch.setattr(P, "PLAIN_EVERY_S", 0.0)
    b = P.bar(4, "features", unit="batch", tty=False)
    b.update(2)
    b.close()
    out = capsys.readouterr().out
    assert "features: 2/4 batch ( 50%)" in out and "elapsed 0:00 ETA 0:00" in out
    monkeypatch.setattr(P, "PLAIN_EVERY_S", 1e9)
    assert list(P.track(range(3), 3, "quick")) == [0, 1, 2] and capsys.readouterr().out == ""  # short: silent
    P.phase("loading data x")
    assert capsys.readouterr().out == "selfsup: loading data x\n"
    monkeypatch.setenv("SELFSUP_QUIET", "1")
    P.phase("loading data x")
    assert capsys.readouterr().out == ""


def test_the_training_bar_follows_the_steps_and_a_resized_run(tmp_path, monkeypatch):
    from selfsup.engine.logging import MetricsLogger

    log = MetricsLogger(tmp_path, total_steps=100, tensorboard=False)
    log.tty = True  # as on a terminal
    for step in range(1, 4):
        log.tick(step)
    assert log.bar is not None and log.bar.n == 3 and log.bar.total == 100
    log.set_total(12)
    assert log.bar.total == 12
    log.progress({"step": 3, "epoch": 0.1, "loss": 1.0, "lr": 0.1, "images_per_s": 10.0, "rankme": 3.0})
    assert "rankme 3" in str(log.bar.postfix)
    log.close()
