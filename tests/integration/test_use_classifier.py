"""``selfsup finetune`` / ``selfsup predict``: a classifier folder trained with the eval protocols' loop, saved as
safetensors + JSON, loaded without code, and used on folders; its bad inputs are one line each."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import make_blobs, save_npz
from PIL import Image

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.use.classifier import META, WEIGHTS, finetune, load_classifier, predict


def write_folder(root, n=6, mode="RGB", size=16, classes=("cat", "dog")):
    g = np.random.default_rng(0)
    for i in range(n):
        d = root / classes[i % len(classes)] if classes else root
        d.mkdir(parents=True, exist_ok=True)
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from selfsup.api import pretrain

    root = tmp_path_factory.mktemp("clf")
    save_npz(make_blobs(n=48, size=16), root / "blobs.npz")
    cfg = build_run_config({"method": {"name": "simclr", "proj_hidden_dim": 16, "proj_dim": 8},
                            "data": {"path": str(root / "blobs.npz")}, "backbone": {"name": "convnet", "width": 0.25},
                            "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "log_every": 1}})
    pretrain(cfg, root / "run", quiet=True)
    finetune(root / "run", str(root / "blobs.npz"), root / "linear", epochs=1, batch_size=16, device="cpu", quiet=True)
    return root


def source_backbone(env):
    from selfsup.use.classifier import load_source_encoder

    return load_source_encoder(env / "run")[0]


def test_the_folder_holds_weights_and_a_readable_description(env):
    d = env / "linear"
    assert sorted(p.name for p in d.iterdir()) == [META, WEIGHTS]
    meta = json.loads((d / META).read_text())
    assert meta["classes"] == ["0", "1", "2", "3"] and meta["head"]["kind"] == "linear"
    pre = meta["preprocessing"]
    assert pre["image_size"] == 16 and pre["channels"] == 3 and len(pre["mean"]) == len(pre["std"]) == 3
    assert meta["encoder"]["run_config"]["backbone"]["name"] == "convnet" and meta["training"]["epochs"] == 1


def test_linear_head_keeps_the_encoder_and_loading_restores_it_exactly(env):
    clf = load_classifier(env / "linear")
    src = source_backbone(env)
    for (k, a), (_, b) in zip(clf.backbone.state_dict().items(), src.state_dict().items()):
        assert torch.equal(a, b), k  # frozen encoder: the run's weights
    from safetensors.torch import load_file

    saved = load_file(str(env / "linear" / WEIGHTS))
    assert torch.equal(saved["head.weight"], clf.head.weight.detach())


@pytest.mark.parametrize("head", ["mlp", "finetune"])
def test_mlp_and_finetune_heads(env, tmp_path, head):
    meta = finetune(env / "run", str(env / "blobs.npz"), tmp_path / head, test=str(env / "blobs.npz"), head=head,
                    epochs=1, batch_size=16, device="cpu", quiet=True)
    assert 0 <= meta["training"]["test_top1"] <= 1
    clf = load_classifier(tmp_path / head)
    src = source_backbone(env)
    same = all(torch.equal(a, b) for a, b in zip(clf.backbone.state_dict().values(), src.state_dict().values()))
    assert same == (head == "mlp")  # only finetune trains the encoder
    if head == "mlp":
        assert [type(m).__name__ for m in clf.head] == ["Linear", "ReLU", "Linear"]


def test_predict_writes_file_class_confidence_and_sorted_top_k(env, tmp_path):
    imgs = write_folder(tmp_path / "imgs", n=5, classes=("a", "b"))
    (imgs / "b" / "deep").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(imgs / "b" / "deep" / "x.png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(env / "linear"), "--data", str(imgs), "--out", str(out), "--top-k", "3",
                 "--device", "cpu", "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["a/0.png", "a/2.png", "a/4.png", "b/1.png", "b/3.png", "b/deep/x.png"]
    clf = load_classifier(env / "linear")
    for r in rows:
        probs = [float(r[f"p{i}"]) for i in (1, 2, 3)]
        assert r["predicted"] == r["top1"] in clf.classes and float(r["confidence"]) == probs[0]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    x = torch.from_numpy(np.array(Image.open(imgs / "a" / "0.png"))).permute(2, 0, 1)[None]
    assert abs(float(clf.probabilities(x).max()) - float(rows[0]["confidence"])) < 1e-3


def test_predict_top_k_is_capped_at_the_number_of_classes(env, tmp_path):
    n = predict(env / "linear", str(env / "blobs.npz"), tmp_path / "p.csv", top_k=10, device="cpu", quiet=True)
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert n == 48 and header[-2:] == ["top4", "p4"]


def one_line(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfsup: error: "), err
    return err[0]


def test_predict_on_images_of_another_channel_count(env, tmp_path, capsys):
    gray = write_folder(tmp_path / "gray", mode="L", classes=())
    err = one_line(["predict", str(env / "linear"), "--data", str(gray), "--out", str(tmp_path / "p.csv")], capsys)
    assert "1-channel images" in err and "3-channel" in err and str(gray) in err


@pytest.mark.parametrize("damage, needle", [
    ("missing", "classifier folder not found"),
    ("no-json", "not a classifier folder"),
    ("json-garbage", "damaged"),
    ("json-not-ours", "not a selfsup classifier"),
    ("json-classes-short", "inconsistent"),
    ("no-weights", "weights model.safetensors are missing"),
    ("weights-cut", "damaged weights"),
    ("weights-other-shape", "do not fit the classifier"),
])
def test_a_missing_or_damaged_classifier_folder_is_one_line(env, tmp_path, capsys, damage, needle):
    import shutil

    d = tmp_path / "clf"
    if damage != "missing":
        shutil.copytree(env / "linear", d)
    meta = json.loads((env / "linear" / META).read_text())
    if damage == "no-json":
        (d / META).unlink()
    elif damage == "json-garbage":
        (d / META).write_bytes(b"\xff{not json")
    elif damage == "json-not-ours":
        (d / META).write_text(json.dumps({"classes": ["a", "b"]}))
    elif damage == "json-classes-short":
        (d / META).write_text(json.dumps({**meta, "classes": ["a"]}))
    elif damage == "no-weights":
        (d / WEIGHTS).unlink()
    elif damage == "weights-cut":
        (d / WEIGHTS).write_bytes((env / "linear" / WEIGHTS).read_bytes()[:100])
    elif damage == "weights-other-shape":
        from safetensors.torch import load_file, save_file

        w = load_file(str(d / WEIGHTS))
        w["head.weight"] = torch.zeros(4, 7)
        save_file(w, str(d / WEIGHTS))
    err = one_line(["predict", str(d), "--data", str(env / "blobs.npz"), "--out", str(tmp_path / "p.csv")], capsys)
    assert needle in err and str(d) in err
    assert not (tmp_path / "p.csv").exists() or (tmp_path / "p.csv").stat().st_size == 0


def test_labelled_data_with_fewer_than_two_classes(env, tmp_path, capsys):
    one = write_folder(tmp_path / "one", classes=("cat",))
    err = one_line(["finetune", str(env / "run"), "--data", str(one), "--out", str(tmp_path / "c"), "--epochs", "1"],
                   capsys)
    assert "at least 2 classes" in err and str(one) in err
    flat = write_folder(tmp_path / "flat", classes=())
    err = one_line(["finetune", str(env / "run"), "--data", str(flat), "--out", str(tmp_path / "c")], capsys)
    assert "labelled images" in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_finetune_bad_source_and_out(env, tmp_path, capsys):
    err = one_line(["finetune", str(tmp_path / "nope"), "--data", str(env / "blobs.npz"), "--out", str(tmp_path / "c")],
                   capsys)
    assert "source run directory not found" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    err = one_line(["finetune", str(env / "run"), "--data", str(env / "blobs.npz"), "--out", str(tmp_path / "busy")],
                   capsys)
    assert "other files" in err and (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    err = one_line(["finetune", str(env / "run"), "--data", str(env / "blobs.npz"), "--out", str(tmp_path / "c"),
                    "--epochs", "0"], capsys)
    assert "--epochs" in err
