"""``selfsup select``: the four strategies on hand-made embeddings, the selection file, and semi on a selection."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_blobs, save_npz

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.data import DataError, load_dataset
from selfsup.data.ids import indices_of, read_selection, split_ids
from selfsup.errors import ConfigError
from selfsup.use.select import (
    STRATEGIES,
    cluster_balanced,
    kcenter,
    load_embeddings,
    select,
    select_indices,
    typicality,
    typicality_scores,
    write_selection,
)


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clusters(sizes=(30, 20, 10), dim=8, spread=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``len(sizes)`` orthogonal directions; returns (x, cluster of each row)."""
    g = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    x = np.eye(dim)[y] + spread * g.normal(size=(len(y), dim))
    return unit(x), y


def save_embeddings(path, x, ids=None, labels=None, **extra):
    arrays = {"embeddings": x, "ids": np.array(ids if ids is not None else [str(i) for i in range(len(x))])}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, **{**arrays, **extra})
    return path


def covering_radius(x: np.ndarray, picks: np.ndarray) -> float:
    return float((1 - x @ x[picks].T).min(1).max())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_picks_budget_distinct_rows_reproducibly(strategy):
    x, _ = clusters()
    a = select_indices(x, 12, strategy, seed=3)
    assert len(a) == 12 == len(set(a.tolist())) and a.min() >= 0 and a.max() < len(x)
    assert np.array_equal(a, select_indices(x, 12, strategy, seed=3))


def test_kcenter_covers_every_cluster_and_beats_random_coverage():
    x, y = clusters(sizes=(40, 5, 5, 2), spread=0.03)
    picks = kcenter(x, 4)
    assert sorted(y[picks].tolist()) == [0, 1, 2, 3]  # random would most likely miss the 2-image cluster
    rand = select_indices(x, 4, "random", seed=0)
    assert covering_radius(x, picks) <= covering_radius(x, rand)
    assert np.array_equal(kcenter(x, 4), picks)  # deterministic start: the row nearest the mean


def test_kcenter_chunking_changes_nothing():
    x, _ = clusters(sizes=(50, 50), dim=6, spread=0.3)
    assert np.array_equal(kcenter(x, 10, chunk=7), kcenter(x, 10, chunk=10_000))


def test_typicality_picks_the_dense_core_of_each_cluster_not_its_outlier():
    x, y = clusters(sizes=(30, 30, 30), spread=0.02)
    far = unit((np.eye(8)[0] + 0.4 * np.eye(8)[5])[None])  # an outlier of cluster 0
    x2 = np.concatenate([x, far])
    picks = typicality(x2, 3, seed=0)
    assert len(x2) - 1 not in picks.tolist()
    assert sorted(np.concatenate([y, [0]])[picks].tolist()) == [0, 1, 2]
    scores = typicality_scores(x2[np.concatenate([np.flatnonzero(y == 0), [len(x2) - 1]])])
    assert scores[-1] == scores.min()  # the outlier is the least typical member


def test_typicality_scores_chunked_equal_unchunked():
    x, _ = clusters(sizes=(25,), spread=0.3)
    assert np.allclose(typicality_scores(x, chunk=4), typicality_scores(x, chunk=1000))


def test_cluster_balanced_takes_equal_shares_nearest_the_centroids():
    x, y = clusters(sizes=(40, 40, 40, 40), spread=0.05)
    picks = cluster_balanced(x, 8, seed=0, clusters=4)
    assert np.bincount(y[picks], minlength=4).tolist() == [2, 2, 2, 2]
    for c in range(4):  # each pick is among the 25 % of its cluster nearest the cluster's mean
        members = np.flatnonzero(y == c)
        d = ((x[members] - x[members].mean(0)) ** 2).sum(1)
        near = set(members[np.argsort(d)[:10]].tolist())
        assert set(picks[y[picks] == c].tolist()) <= near


def test_cluster_balanced_gives_a_small_clusters_share_to_the_others():
    x, y = clusters(sizes=(40, 40, 1), spread=0.05)
    picks = cluster_balanced(x, 9, seed=0, clusters=3)
    assert len(set(picks.tolist())) == 9 and np.bincount(y[picks], minlength=3).tolist() == [4, 4, 1]


@pytest.mark.parametrize("budget, strategy, needle", [(61, "kcenter", "--budget 61 is larger than the 60 images"),
                                                       (0, "random", "--budget"), (-2, "kcenter", "--budget"),
                                                       (3, "coreset", "kcenter, typicality, cluster-balanced")])
def test_bad_budgets_and_strategies_are_one_line(budget, strategy, needle):
    x, _ = clusters()
    with pytest.raises(ConfigError, match=needle):
        select_indices(x, budget, strategy)


@pytest.mark.parametrize("arrays, needle", [
    ({"x_train": np.zeros((4, 2, 2, 3), np.uint8)}, "missing array 'embeddings'"),
    ({"embeddings": np.zeros((4, 3), np.float32)}, "missing array 'ids'"),
    ({"embeddings": np.zeros((4, 3), np.uint8), "ids": np.arange(4)}, "'embeddings' must be a non-empty float"),
    ({"embeddings": np.ones((4,), np.float32), "ids": np.arange(4)}, "'embeddings' must be a non-empty float"),
    ({"embeddings": np.ones((4, 3), np.float32), "ids": np.arange(3)}, "'ids' must be 4 strings"),
    ({"embeddings": np.full((4, 3), np.nan, np.float32), "ids": np.arange(4)}, "NaN"),
    ({"embeddings": np.ones((4, 3), np.float32), "ids": np.arange(4), "labels": np.arange(2)}, "'labels'"),
])
def test_a_file_without_the_expected_arrays_is_one_line(tmp_path, arrays, needle):
    p = tmp_path / "e.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=needle):
        load_embeddings(p)


def test_not_an_npz_and_a_missing_file_name_the_file(tmp_path):
    (tmp_path / "t.npz").write_text("not a zip")
    for p in (tmp_path / "t.npz", tmp_path / "none.npz"):
        with pytest.raises(DataError, match=str(p)):
            load_embeddings(p)


def test_selection_files_round_trip_as_lines_and_csv(tmp_path):
    ids = ["cat/a b.png", "7", "dog/x,y.png"]
    for name in ("s.txt", "s.csv"):
        write_selection(tmp_path / name, ids, "kcenter")
        assert read_selection(tmp_path / name) == ids
    assert (tmp_path / "s.csv").read_text().splitlines()[:2] == ["id,strategy,rank", "cat/a b.png,kcenter,0"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_selection(tmp_path / "empty.txt")


def test_select_writes_labels_coverage_and_ids(tmp_path, capsys):
    x, y = clusters(sizes=(20, 20, 20))
    p = save_embeddings(tmp_path / "e.npz", x, ids=[f"img{i}.png" for i in range(60)], labels=y)
    assert main(["select", str(p), "--budget", "6", "--strategy", "typicality", "--out", str(tmp_path / "s.txt")]) == 0
    got = read_selection(tmp_path / "s.txt")
    assert len(got) == 6 and all(g.startswith("img") for g in got)
    assert "cover 3 of 3 labels" in capsys.readouterr().out
    assert select(p, 60, "kcenter", tmp_path / "all.csv", quiet=True) == read_selection(tmp_path / "all.csv")


def test_cli_budget_larger_than_the_data_is_one_stderr_line(tmp_path, capsys):
    p = save_embeddings(tmp_path / "e.npz", clusters()[0])
    assert main(["select", str(p), "--budget", "1000", "--out", str(tmp_path / "s.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"selfsup: error: --budget 1000 is larger than the 60 images of {p}"]
    assert not (tmp_path / "s.txt").exists()


def test_folder_ids_are_relative_paths_and_stay_aligned_past_a_corrupt_file(tmp_path):
    from PIL import Image

    for rel in ("cat/a.png", "cat/sub/b.png", "dog/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / rel)
    (tmp_path / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = load_dataset(str(tmp_path), 8)
    assert split_ids(ds.train) == ["cat/a.png", "cat/sub/b.png", "dog/c.png"]
    assert indices_of(["dog/c.png", "cat/a.png"], ds.train, where="s", data="d").tolist() == [2, 0]
    with pytest.raises(DataError, match="paths relative to the folder"):
        indices_of(["cat/bad.png"], ds.train, where="s", data="d")


def test_npz_ids_are_train_rows_as_embed_writes_them(blobs_npz):
    ds = load_dataset(str(blobs_npz))
    assert split_ids(ds.train)[:3] == ["train/0", "train/1", "train/2"]
    assert indices_of(["train/5", "3"], ds.train, where="s", data="d").tolist() == [5, 3]  # a bare row: same image
    with pytest.raises(DataError, match=r"1 of 2 ids .*first: 'train/32'.*train/0\.\.train/31"):
        indices_of(["train/3", "train/32"], ds.train, where="sel.txt", data=str(blobs_npz))
    with pytest.raises(DataError, match="test-split images"):
        indices_of(["train/3", "test/0"], ds.train, where="sel.txt", data=str(blobs_npz))


def test_select_leaves_test_split_ids_out(tmp_path):
    x, _ = clusters(sizes=(20, 20))
    ids = [f"train/{i}" for i in range(30)] + [f"test/{i}" for i in range(10)]
    p = save_embeddings(tmp_path / "e.npz", x, ids=ids)
    got = select(p, 30, "kcenter", tmp_path / "s.txt", quiet=True)
    assert sorted(got) == sorted(ids[:30])
    with pytest.raises(ConfigError, match="larger than the 30 images of train/"):
        select(p, 31, "random", tmp_path / "s.txt", quiet=True)


# ------------------------------------------------------------------------------------ semi on a selection file
@pytest.fixture(scope="module")
def semi_run(tmp_path_factory):
    from selfsup.api import pretrain

    root = tmp_path_factory.mktemp("selrun")
    save_npz(make_blobs(n=48, size=16), root / "blobs.npz")
    cfg = build_run_config({"method": {"name": "simclr", "proj_hidden_dim": 16, "proj_dim": 8},
                            "data": {"path": str(root / "blobs.npz")}, "backbone": {"name": "convnet", "width": 0.25},
                            "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "log_every": 1}})
    pretrain(cfg, root / "run", quiet=True)
    return root


def test_semi_trains_on_exactly_the_selected_images(semi_run, tmp_path):
    from selfsup.evaluation.runner import evaluate_run

    chosen = ["5", "0", "17", "33", "2", "40", "11", "26"]
    write_selection(tmp_path / "pick.csv", chosen, "kcenter")
    r = evaluate_run(semi_run / "run", ["semi"], device="cpu", baseline=False, selection=tmp_path / "pick.csv",
                     quiet=True)
    semi = r["semi"]
    assert semi["labelled_images"] == {"top1@selected": 8}
    assert 0 <= semi["top1"] <= 1 and semi["params"]["selection"] == str(tmp_path / "pick.csv")
    saved = json.loads((semi_run / "run" / semi["subset_files"]["top1@selected"]).read_text())
    assert saved["indices"] == sorted(int(c) for c in chosen)


def test_the_probe_is_fitted_on_the_selected_rows(semi_run, tmp_path, monkeypatch):
    import selfsup.evaluation.semi as semi_mod
    from selfsup.evaluation.runner import evaluate_run

    seen = []
    real = semi_mod.linear_probe

    def spy(ftr, ytr, *a, **k):
        seen.append(ytr.clone())
        return real(ftr, ytr, *a, **k)

    monkeypatch.setattr(semi_mod, "linear_probe", spy)
    write_selection(tmp_path / "pick.txt", ["4", "8", "1", "2"], "random")  # labels 0, 0, 1, 2 (blobs: i % 4)
    evaluate_run(semi_run / "run", ["semi"], device="cpu", baseline=False, selection=tmp_path / "pick.txt", quiet=True)
    assert sorted(seen[0].tolist()) == [0, 0, 1, 2]


@pytest.mark.parametrize("lines, extra, needle", [
    (["0", "1", "999"], (), "1 of 3 ids are not images of"),
    (["0"], (), "at least 2 selected images"),
    (["0", "1"], ("--protocol", "knn"), "semi protocol only"),
    (["0", "1"], ("--fractions", "0.5"), "give one"),
])
def test_bad_selections_are_one_line(semi_run, tmp_path, capsys, lines, extra, needle):
    sel = tmp_path / "s.txt"
    sel.write_text("\n".join(lines) + "\n")
    proto = ("--protocol", "semi") if "--protocol" not in extra else ()
    argv = ["eval", str(semi_run / "run"), "--no-baseline", "--device", "cpu", *proto, *extra, "--selection", str(sel)]
    before = sorted(p.name for p in (semi_run / "run").iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in (semi_run / "run").iterdir()) == before


def test_selection_of_a_missing_file_names_it(semi_run, tmp_path, capsys):
    argv = ["eval", str(semi_run / "run"), "--no-baseline", "--protocol", "semi", "--selection", str(tmp_path / "no")]
    assert main(argv) == 2
    assert f"selection file not found: {tmp_path / 'no'}" in capsys.readouterr().err


def test_stratified_fractions_unchanged_without_a_selection(semi_run):
    from selfsup.evaluation.runner import evaluate_run

    r = evaluate_run(semi_run / "run", ["semi"], device="cpu", baseline=False, fractions=[0.5], quiet=True)
    assert r["semi"]["labelled_images"] == {"top1@50%": 24}
    assert r["semi"]["params"]["sampling"] == "stratified per class" and "selection" not in r["semi"]["params"]
