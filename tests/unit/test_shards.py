"""Tar shards (``selfsup shard``, data/shards.py): the same images, labels and ids as the folder they came from; a
seeded, windowed, resumable order that reads each image once; the size cap; refusals; every bad shard is one line
naming it; a corrupt member is a counted skip; pretraining and evaluation on a shard folder."""
from __future__ import annotations

import io
import json
import math
import os
import sys
import tarfile
import warnings

import numpy as np
import pytest
import torch
from conftest import tiny_run_config
from PIL import Image

from selfsup.cli.main import main
from selfsup.data import DataError, load_dataset
from selfsup.data import shards as shards_mod
from selfsup.data.folder import load_folder
from selfsup.data.shard_write import write_index, write_shards
from selfsup.data.shards import ShardSplit, open_split, scan_shard
from selfsup.engine.trainer import pretrain

TINY = ["--backbone", "convnet", "--width", "0.25", "--batch-size", "8", "--device", "cpu"]


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def noise(size=(16, 16), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def save_image(path, size=(16, 16), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(size, seed)).save(path)  # the format from the extension
    return path


def encoded(fmt: str, size=(16, 16), seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(size, seed)).save(buf, fmt)
    return buf.getvalue()


def make_folder(root, counts=(4, 4, 4), seed=0):
    """``root/<class>/NN.png|jpg``: PNGs and JPEGs of 16-24 px, one class per count."""
    for c, n in enumerate(counts):
        for i in range(n):
            ext = "png" if i % 2 == 0 else "jpg"
            save_image(root / "abc"[c] / f"{i:02d}.{ext}", size=(16 + 2 * (i % 4), 24 - i % 4), seed=seed + 10 * c + i)
    return root


def make_shards(tmp_path, per_shard=4):
    """12 labelled images (3 classes) in 3 shards of 4; returns (folder, shard folder)."""
    root = make_folder(tmp_path / "photos")
    write_shards(root, tmp_path / "shards", images_per_shard=per_shard)
    return root, tmp_path / "shards"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def read_all(split, batch_size=5, **kw):
    got = list(split.batches(batch_size, **kw))
    return (torch.cat([b[0] for b in got]), torch.cat([b[1] for b in got]),
            torch.cat([b[2] for b in got]) if got and got[0][2] is not None else None)


def edit_index(out, change) -> None:
    index = json.loads((out / "index.json").read_text())
    change(index)
    (out / "index.json").write_text(json.dumps(index))


# ----------------------------------------------------------------------------------------------- round trip
def test_round_trip_gives_the_folders_images_labels_and_ids(tmp_path):
    root = make_folder(tmp_path / "photos")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no skip, no conversion
        (s,) = write_shards(root, tmp_path / "shards", images_per_shard=5)
        ds = load_dataset(str(tmp_path / "shards"), image_size=16)
    assert (s.images, s.shards, s.skipped, s.reencoded, s.channels) == (12, 3, 0, 0, 3)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "index.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    folder = load_folder(root, 16)
    assert isinstance(ds.train, ShardSplit) and ds.classes == folder.classes == ["a", "b", "c"]
    assert ds.train.ids == folder.train.ids and ds.train.ids[:2] == ["a/00.png", "a/01.jpg"]
    assert torch.equal(ds.train.labels, folder.train.labels) and ds.image_size == (16, 16) and ds.channels == 3
    ds.train.workers = 0
    x, idx, y = read_all(ds.train, shuffle=False)
    assert torch.equal(idx, torch.arange(12)) and torch.equal(x, folder.train.images)
    assert torch.equal(y, folder.train.labels)


def test_members_hold_the_original_bytes_and_the_index_describes_them(tmp_path):
    root, out = make_shards(tmp_path)
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert tar.getnames()[:3] == ["000000000.png", "000000000.cls", "000000000.id"]
        assert tar.extractfile("000000000.png").read() == (root / "a" / "00.png").read_bytes()
        assert tar.extractfile("000000001.jpg").read() == (root / "a" / "01.jpg").read_bytes()
        assert tar.extractfile("000000000.id").read() == b"a/00.png"
        assert tar.extractfile("000000001.cls").read() == b"0"
    index = json.loads((out / "index.json").read_text())
    assert (index["format"], index["version"], index["channels"], index["classes"]) == ("selfsup-shards", 1, 3,
                                                                                        ["a", "b", "c"])
    assert [e["count"] for e in index["shards"]] == [4, 4, 4] and index["num_images"] == 12
    assert index["shards"][1]["labels"] == [1, 1, 1, 1] and index["shards"][2]["ids"][0] == "c/00.png"


def test_a_flat_folder_gives_unlabelled_shards(tmp_path):
    for i in range(3):
        save_image(tmp_path / "flat" / f"{i}.png", seed=i)
    (s,) = write_shards(tmp_path / "flat", tmp_path / "shards")
    ds = load_dataset(str(tmp_path / "shards"), image_size=16)
    assert s.classes == [] and ds.train.labels is None and ds.classes == []
    assert ds.train.ids == ["0.png", "1.png", "2.png"]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        assert not any(n.endswith(".cls") for n in tar.getnames())


# ----------------------------------------------------------------------------------------------- order
def test_the_shuffled_order_is_set_by_the_generator_alone(tmp_path):
    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16)
    a = read_all(split, 4, shuffle=True, generator=gen(0))[1]
    assert sorted(a.tolist()) == list(range(12))
    assert torch.equal(read_all(split, 4, shuffle=True, generator=gen(0))[1], a)
    assert not torch.equal(read_all(split, 4, shuffle=True, generator=gen(1))[1], a)
    assert torch.equal(split.epoch_order(gen(0)), a)


def test_a_window_of_one_shard_reads_one_shard_at_a_time(tmp_path):
    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16)
    split.window = 1
    blocks = split.shard_of[split.epoch_order(gen(3))].view(3, 4)  # 3 shards of 4 images
    assert all(len(set(b.tolist())) == 1 for b in blocks) and sorted(blocks[:, 0].tolist()) == [0, 1, 2]


def test_two_workers_read_every_image_exactly_once_in_the_generators_order(tmp_path):
    root, out = make_shards(tmp_path)
    folder = load_folder(root, 16)
    split, _ = open_split(out, 16, workers=2)
    x, idx, y = read_all(split, 3, shuffle=True, generator=gen(0))
    assert sorted(idx.tolist()) == list(range(12))
    assert torch.equal(idx, split.epoch_order(gen(0)))  # the order, not the workers, decides
    assert torch.equal(x, folder.train.images[idx]) and torch.equal(y, folder.train.labels[idx])


def test_start_batch_continues_the_epoch_exactly(tmp_path):
    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16)
    full = list(split.batches(3, shuffle=True, generator=gen(5), drop_last=True))
    tail = list(split.batches(3, shuffle=True, generator=gen(5), drop_last=True, start_batch=2))
    assert len(full) == split.num_batches(3, drop_last=True) == 4 and len(tail) == 2
    for (xa, ia, ya), (xb, ib, yb) in zip(full[2:], tail):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_torchrun_rank_slices_make_up_the_single_process_batches(tmp_path):
    """engine/distributed.py ``rank_batches``: each rank reads its half of every global batch, from start_batch."""
    from selfsup.engine import distributed as D

    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16)
    single = list(split.batches(4, shuffle=True, generator=gen(3), drop_last=True, start_batch=1))
    per_rank = [list(D.rank_batches(split, 4, D.DistContext(r, 2), generator=gen(3), start_batch=1)) for r in (0, 1)]
    assert len(single) == 2 and all(len(p) == 2 for p in per_rank)
    for k, (x, idx, y) in enumerate(single):
        (x0, i0, y0), (x1, i1, y1) = per_rank[0][k], per_rank[1][k]
        assert i0.shape == (2,) and torch.equal(torch.cat([i0, i1]), idx)
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_a_subset_reads_the_images_it_names(tmp_path):
    root, out = make_shards(tmp_path)
    folder = load_folder(root, 16)
    split, _ = open_split(out, 16)
    part = split.subset(torch.tensor([7, 2, 11]))
    x, _, y = read_all(part, shuffle=False)
    assert part.ids == [folder.train.ids[i] for i in (7, 2, 11)]
    assert torch.equal(x, folder.train.images[[7, 2, 11]]) and y.tolist() == [1, 0, 2]


# ----------------------------------------------------------------------------------------------- writing
def test_an_image_over_the_size_cap_is_reencoded_smaller_and_keeps_its_id(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        save_image(root / f"small{i}.png", seed=i)  # about 850 bytes each
    big = save_image(root / "big.bmp", size=(64, 64), seed=9)  # uncompressed noise: 12 kB
    assert big.stat().st_size > 12_000
    (s,) = write_shards(root, tmp_path / "shards", max_bytes_per_image=2500)
    assert (s.images, s.reencoded, s.skipped) == (4, 1, 0)
    entry = json.loads((tmp_path / "shards" / "index.json").read_text())["shards"][0]
    assert entry["ids"] == ["big.bmp", "small0.png", "small1.png", "small2.png"]
    name, _, size = entry["members"][0]
    assert name == "000000000.jpg" and size <= 2500
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        data = tar.extractfile(name).read()
        assert tar.extractfile("000000001.png").read() == (root / "small0.png").read_bytes()  # under the cap: kept
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size[0] == im.size[1] and 16 <= im.size[0] < 64  # downscaled to fit
    ds = load_dataset(str(tmp_path / "shards"), image_size=16)
    ds.train.workers = 0
    assert read_all(ds.train, shuffle=False)[0].shape == (4, 3, 16, 16)


def test_images_that_cannot_fit_the_cap_are_skipped_and_none_left_is_an_error(tmp_path):
    for i in range(2):
        save_image(tmp_path / "photos" / f"{i}.png", seed=i)
    with pytest.raises(DataError, match="none of its 2 images") as e:
        write_shards(tmp_path / "photos", tmp_path / "shards", max_bytes_per_image=100)
    assert "max_bytes_per_image=100" in one_line(e)


def test_unreadable_files_are_skipped_at_write_time_with_a_count(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "a" / "zz_bad.png").write_bytes(os.urandom(200))
    good = encoded("PNG", size=(40, 40))
    (root / "b" / "zz_cut.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match=r"skipped 2 of 14 images \(first: a/zz_bad\.png"):
        (s,) = write_shards(root, tmp_path / "shards", images_per_shard=5)
    assert (s.images, s.skipped) == (12, 2)
    assert load_dataset(str(tmp_path / "shards"), 16).train.ids == load_folder(root, 16).train.ids


def test_a_non_empty_out_dir_is_refused_and_left_alone(tmp_path):
    root = make_folder(tmp_path / "photos", counts=(2,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as e:
        write_shards(root, out)
    assert str(out) in one_line(e)
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    write_shards(root, tmp_path / "shards")
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    with pytest.raises(DataError, match="not empty"):
        write_shards(root, tmp_path / "shards")  # a finished shard folder is never written over
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before


def test_bad_writer_arguments_are_one_line(tmp_path):
    from selfsup.errors import ConfigError

    root = make_folder(tmp_path / "photos", counts=(1,))
    with pytest.raises(ConfigError, match="images_per_shard"):
        write_shards(root, tmp_path / "s", images_per_shard=0)
    with pytest.raises(ConfigError, match="max_bytes_per_image"):
        write_shards(root, tmp_path / "s", max_bytes_per_image=-1)
    with pytest.raises(DataError, match="not found"):
        write_shards(tmp_path / "missing", tmp_path / "s")


# ----------------------------------------------------------------------------------------------- bad shards
def test_a_missing_shard_is_one_line_naming_it(tmp_path):
    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16)
    (out / "shard-000001.tar").unlink()
    with pytest.raises(DataError, match=r"shard-000001\.tar: missing") as e:
        load_dataset(str(out), 16)
    one_line(e)
    with pytest.raises(DataError, match=r"shard-000001\.tar: cannot read it") as e:  # gone after it was opened
        read_all(split, shuffle=False)
    one_line(e)


def test_a_truncated_shard_is_one_line_naming_it(tmp_path):
    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16)
    shard = out / "shard-000001.tar"
    os.truncate(shard, shard.stat().st_size // 3)
    with pytest.raises(DataError, match=r"shard-000001\.tar: \d+ bytes but index\.json records \d+") as e:
        load_dataset(str(out), 16)
    one_line(e)
    with pytest.raises(DataError, match=r"shard-000001\.tar: truncated") as e:  # cut after it was opened
        read_all(split, shuffle=False)
    one_line(e)


def swap_first_offsets(ix) -> None:
    """Image 0 said to be where image 1 is: the tar header there names another member."""
    m = ix["shards"][0]["members"]
    m[0][1], m[1][1] = m[1][1], m[0][1]


def offset_past_the_end(ix) -> None:
    ix["shards"][2]["members"][0][1] = 10**9


@pytest.mark.parametrize("change,match", [
    (swap_first_offsets, r"shard-000000\.tar: does not match index\.json: no member 00000000[01]\.(png|jpg)"),
    (lambda ix: ix["shards"][1].update(count=5), r"shard-000001\.tar: its entry in index\.json does not describe"),
    (offset_past_the_end, r"shard-000002\.tar: its entry in index\.json does not describe"),
    (lambda ix: ix["shards"].append(dict(ix["shards"][0])), "lists a shard more than once"),
    (lambda ix: ix.update(num_images=13), "num_images is 13 but its shards hold 12"),
    (lambda ix: ix.update(version=99), "version 99"),
    (lambda ix: ix["shards"][0].update(name="../photos/a/00.png"), "without a shard file name"),
])
def test_an_index_that_does_not_match_its_shards_is_one_line(tmp_path, change, match):
    _, out = make_shards(tmp_path)
    edit_index(out, change)
    with pytest.raises(DataError, match=match) as e:
        load_dataset(str(out), 16)
    one_line(e)


def test_shards_without_their_index_or_with_a_broken_one(tmp_path):
    _, out = make_shards(tmp_path)
    (out / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable shard index") as e:
        load_dataset(str(out), 16)
    one_line(e)
    (out / "index.json").unlink()
    with pytest.raises(DataError, match=r"no index\.json") as e:
        load_dataset(str(out), 16)
    one_line(e)


def test_a_corrupt_image_inside_a_hand_made_shard_is_a_counted_skip(tmp_path):
    out = tmp_path / "hand"
    out.mkdir()
    members = [("0.png", encoded("PNG", seed=0)), ("0.cls", b"0"), ("0.id", b"a/0.png"),
               ("1.png", os.urandom(300)), ("1.cls", b"1"), ("1.id", b"b/1.png"),
               ("2.jpg", encoded("JPEG", seed=2)), ("2.cls", b"1"), ("2.id", b"b/2.jpg")]
    with tarfile.open(out / "shard-000000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_index(out, [scan_shard(out / "shard-000000.tar")], classes=["a", "b"], channels=3)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable images .*first: b/1\.png"):
        ds = load_dataset(str(out), image_size=16)
    assert ds.train.num_images == 3 and ds.train.ids == ["a/0.png", "b/1.png", "b/2.jpg"]
    ds.train.workers = 0
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        x, idx, y = read_all(ds.train, 2, shuffle=False)
    assert idx.tolist() == [0, 2] and y.tolist() == [0, 1] and x.shape == (2, 3, 16, 16)


@pytest.mark.skipif(sys.platform != "linux" or sys.version_info >= (3, 14),
                    reason="the patched reader reaches the DataLoader worker by fork")
def test_a_reader_process_that_dies_is_one_line_naming_the_shard(tmp_path, monkeypatch):
    _, out = make_shards(tmp_path)
    split, _ = open_split(out, 16, workers=1)
    monkeypatch.setattr(shards_mod._ShardItems, "__getitem__", lambda self, i: os._exit(3))
    with pytest.raises(DataError, match=r"a reader process died while reading shard-00000\d\.tar") as e:
        read_all(split, 4, shuffle=False)
    one_line(e)


# ----------------------------------------------------------------------------------------------- training
def test_pretraining_on_a_shard_folder(tmp_path):
    _, out = make_shards(tmp_path)
    cfg = tiny_run_config("simclr", {"proj_hidden_dim": 16, "proj_dim": 8}, data=out, optim={})
    cfg.data.image_size = 16
    res = pretrain(cfg, tmp_path / "run", quiet=True)
    assert res.steps == 2 and math.isfinite(res.final_loss)  # 12 images, batch 8: one step an epoch, 2 epochs


def test_the_cli_shards_a_train_and_val_folder_that_pretrain_and_eval_read(tmp_path, capsys):
    photos = tmp_path / "photos"
    make_folder(photos / "train", counts=(6, 6))
    make_folder(photos / "val", counts=(3, 3), seed=100)
    shards = tmp_path / "shards"
    assert main(["shard", str(photos), str(shards), "--images-per-shard", "5"]) == 0
    out = capsys.readouterr().out
    assert "wrote 12 images in 3 shards" in out and "wrote 6 images in 2 shards" in out
    assert (shards / "train" / "index.json").is_file() and (shards / "val" / "index.json").is_file()
    ds = load_dataset(str(shards), 16)
    assert ds.classes == ["a", "b"] and ds.train.num_images == 12 and isinstance(ds.test, ShardSplit)
    assert ds.test.num_images == 6 and ds.test.ids[0] == "a/00.png"
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(shards), "--image-size", "16", *TINY, "--max-steps", "2",
                 "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--protocol", "knn", "--device", "cpu", "--no-baseline"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["protocol"]["train_images"] == 12 and res["protocol"]["test_images"] == 6 and "top1" in res["knn"]


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    root = make_folder(tmp_path / "photos", counts=(2,))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for argv, needle in ((["shard", str(root), str(tmp_path / "full")], "not empty"),
                         (["shard", str(tmp_path / "none"), str(tmp_path / "o")], "not found"),
                         (["shard", str(root), str(tmp_path / "o"), "--images-per-shard", "0"], "--images-per-shard"),
                         (["shard", str(root), str(tmp_path / "o"), "--max-image-bytes", "0"], "--max-image-bytes")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("selfsup: error:") and needle in err


def test_resume_refuses_shards_that_changed_under_the_run(tmp_path):
    """The run's position (an epoch's order and how far into it) refers to its shards: the same images written
    into other shards (same count, same shapes) is refused on --resume, in one line; the same shards resume."""
    import shutil

    from selfsup.errors import ConfigError

    root, shards = make_shards(tmp_path)
    cfg = tiny_run_config("simclr", {"proj_hidden_dim": 32, "proj_dim": 16}, data=shards, max_steps=1, epochs=4)
    out = tmp_path / "run"
    pretrain(cfg, out, quiet=True)
    again = tiny_run_config("simclr", {"proj_hidden_dim": 32, "proj_dim": 16}, data=shards, max_steps=2, epochs=4)
    assert pretrain(again, out, resume=True, quiet=True).stopped == "max_steps"  # the same shards: resumes
    shutil.rmtree(shards)
    write_shards(root, shards, images_per_shard=5)  # the same 12 images, other shards
    with pytest.raises(ConfigError, match="shards of data.path are not those") as e:
        pretrain(tiny_run_config("simclr", {"proj_hidden_dim": 32, "proj_dim": 16}, data=shards, max_steps=3,
                                 epochs=4),
                 out, resume=True, quiet=True)
    one_line(e)
