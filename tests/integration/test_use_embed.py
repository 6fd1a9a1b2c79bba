"""``selfsup.load_encoder`` and ``selfsup embed``: the run's own encoder and preprocessing, every input kind, every
output format, corrupt files skipped with ids kept aligned, batches streamed."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from usekit import image_folder, tiny_run

import selfsup
from selfsup.augment.pipeline import eval_view
from selfsup.checkpoints import load_run_checkpoint
from selfsup.cli.main import main
from selfsup.engine.export import export_backbone
from selfsup.engine.run_access import rebuild_method
from selfsup.errors import CheckpointError
from selfsup.use.encoder import load_encoder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("use-embed") / "run")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("use-embed-data") / "photos")


def reference_features(run, x: torch.Tensor) -> torch.Tensor:
    """What evaluation computes: the eval backbone on the eval view with the run's recorded mean/std."""
    path, ckpt = load_run_checkpoint(run)
    info = ckpt["data"]
    with torch.no_grad():
        return rebuild_method(ckpt, path).eval_backbone().eval()(
            eval_view(info["image_size"][0], info["mean"], info["std"])(x))


def test_load_encoder_from_a_run_is_the_eval_backbone_with_the_runs_preprocessing(run):
    enc = selfsup.load_encoder(run)
    assert selfsup.load_encoder is load_encoder
    assert not enc.backbone.training and enc.info["kind"] == "run" and enc.info["step"] == 2
    p = enc.preprocessing
    assert (p.image_size, p.channels, len(p.mean), len(p.std)) == (16, 3, 3, 3)
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    f = enc.embed(x, batch_size=2)
    assert f.shape == (5, enc.num_features) and f.dtype == torch.float32 and not f.requires_grad
    torch.testing.assert_close(f, reference_features(run, x), rtol=1e-5, atol=1e-5)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x]
    torch.testing.assert_close(enc.embed(pil), f, rtol=1e-4, atol=1e-4)  # PIL images read as folder files are
    unit = enc.embed(x, normalize=True)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(5))


def test_embed_refuses_what_is_not_a_batch_of_images(run):
    enc = load_encoder(run)
    for bad, words in ((torch.rand(2, 3, 16, 16), "uint8"), (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), "channels"),
                       ([1, 2], "PIL")):
        with pytest.raises(ValueError, match=words):
            enc.embed(bad)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_load_encoder_from_an_export_equals_the_run(run, tmp_path, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    path = export_backbone(run, fmt, tmp_path / f"bb.{fmt}")
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    enc = load_encoder(path)
    assert enc.info["kind"] == "export" and enc.preprocessing == load_encoder(run).preprocessing
    torch.testing.assert_close(enc.embed(x), load_encoder(run).embed(x))


def test_load_encoder_from_the_timm_export_folder_equals_the_run(tmp_path):
    pytest.importorskip("safetensors")
    run = tiny_run(tmp_path / "r18-run", backbone="resnet18")
    folder = export_backbone(run, "timm", tmp_path / "r18-timm")
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    enc = load_encoder(folder)
    assert enc.info["kind"] == "export" and enc.preprocessing == load_encoder(run).preprocessing
    torch.testing.assert_close(enc.embed(x), load_encoder(run).embed(x))


def test_a_vit_export_under_timm_names_loads_back(tmp_path):
    run = tiny_run(tmp_path / "vit-run", backbone="vit-test")
    path = export_backbone(run, "pt", tmp_path / "vit.pt")
    assert "patch_embed.proj.weight" in torch.load(path, weights_only=True)  # timm's names in the file
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(load_encoder(path).embed(x), reference_features(run, x), rtol=1e-5, atol=1e-5)


def test_an_export_of_another_architecture_than_it_claims_is_one_line(run, tmp_path):
    path = export_backbone(run, "pt", tmp_path / "bb.pt")
    side = tmp_path / "bb.pt.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "arch": "resnet18"}))
    with pytest.raises(CheckpointError, match=r"bb\.pt: its weights are not those of the resnet18 .* claims"):
        load_encoder(path)
    side.write_text(json.dumps({**meta, "width": 0.5}))
    with pytest.raises(CheckpointError, match="convnet .width 0.5. its metadata claims .*shape"):
        load_encoder(path)


def test_a_backbone_name_is_a_seeded_random_init(tmp_path):
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    a = load_encoder("convnet", image_size=16, width=0.25, seed=3).embed(x)
    b = load_encoder("convnet", image_size=16, width=0.25, seed=3).embed(x)
    c = load_encoder("convnet", image_size=16, width=0.25, seed=4).embed(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="not a run directory, an export file or a backbone name"):
        load_encoder(tmp_path / "nosuch")


def cli(*argv):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    return rc, [str(m.message) for m in w]


def test_embed_a_folder_every_format_ids_aligned_and_corrupt_files_counted(run, folder, tmp_path):
    enc = load_encoder(run)
    rows = {}
    for suffix in (".npz", ".csv", ".pt"):
        out = tmp_path / f"emb{suffix}"
        rc, warned = cli("embed", run, "--data", folder, "--out", out, "--batch-size", "5")
        assert rc == 0
        assert any("skipped 1 of 25 unreadable images" in m and "c0/bad.png" in m for m in warned)
        meta = json.loads((tmp_path / f"emb{suffix}.json").read_text())
        assert meta["encoder"]["preprocessing"] == enc.preprocessing.to_dict() and meta["skipped"] == 1
        assert meta["encoder"]["source"] == str(run.resolve()) and meta["root"] == str(folder.resolve())
        rows[suffix] = out
    with np.load(rows[".npz"], allow_pickle=False) as z:
        ids, vecs, labels = list(z["ids"]), z["embeddings"], z["labels"]
        assert vecs.dtype == np.float32 and vecs.shape == (24, enc.num_features) and list(z["classes"]) == \
            ["c0", "c1", "c2", "c3"]
    assert "c0/bad.png" not in ids and "c3/deep/07.png" in ids  # recursive; the skipped file has no row
    pt = torch.load(rows[".pt"], weights_only=True)
    assert pt["ids"] == ids and pt["labels"].tolist() == labels.tolist()
    torch.testing.assert_close(pt["embeddings"].numpy(), vecs)
    lines = rows[".csv"].read_text().splitlines()
    head = lines[0].split(",")
    assert head[0] == "filenames" and head[1] == "embedding_0" and head[-1] == "labels"
    assert len(head) == enc.num_features + 2 and len(lines) == 25
    first = lines[1].split(",")
    assert first[0] == ids[0] and np.allclose([float(v) for v in first[1:-1]], vecs[0], atol=1e-6)
    for i in (0, 7, 23):  # row i is the image ids[i]
        with Image.open(folder / ids[i]) as im:
            np.testing.assert_allclose(enc.embed([im]).numpy()[0], vecs[i], rtol=1e-4, atol=1e-4)
        assert labels[i] == int(ids[i][1])


def test_embed_an_npz_normalized_and_a_backbone_name(run, blobs_npz, tmp_path):
    out = tmp_path / "e.npz"
    assert cli("embed", run, "--data", blobs_npz, "--out", out, "--normalize")[0] == 0
    with np.load(out, allow_pickle=False) as z:
        assert z["embeddings"].shape[0] == 48 and z["ids"][0] == "train/0" and z["ids"][-1] == "test/15"
        np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1, rtol=1e-5)
        assert json.loads(str(z["meta"]))["normalized"] is True
    out = tmp_path / "random.pt"
    assert cli("embed", "convnet", "--data", blobs_npz, "--out", out, "--width", "0.25")[0] == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["encoder"]["kind"] == "backbone" and meta["encoder"]["seed"] == 0
    assert meta["encoder"]["preprocessing"]["image_size"] == 16  # the data's own size


def test_embed_streams_the_folder_in_batches(run, folder, tmp_path, monkeypatch):
    from selfsup.use import embed as embed_module
    from selfsup.use.encoder import Encoder

    decoded, seen = [0], []
    real_decode, real_embed = embed_module.decode_image, Encoder.embed

    def counting_decode(*a, **k):
        decoded[0] += 1
        return real_decode(*a, **k)

    def spying_embed(self, images, **k):
        seen.append((decoded[0], len(images)))
        return real_embed(self, images, **k)

    monkeypatch.setattr(embed_module, "decode_image", counting_decode)
    monkeypatch.setattr(Encoder, "embed", spying_embed)
    emb = embed_module.embed_data(load_encoder(run), str(folder), batch_size=4, workers=1)
    assert len(emb.ids) == 24 and len(seen) >= 6
    assert all(n <= 4 for _, n in seen) and seen[0][0] <= 4  # one batch decoded at a time, not the folder


def test_embed_unknown_output_suffix_is_one_line_before_any_work(run, folder, tmp_path, capsys):
    assert main(["embed", str(run), "--data", str(folder), "--out", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "'.parquet'" in err[0] and ".npz, .csv, .pt" in err[0]
    assert not (tmp_path / "e.parquet").exists()


def test_import_selfsup_stays_light():
    code = "import sys, selfsup; assert 'torch' not in sys.modules; assert callable(selfsup.load_encoder)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
