"""``selfsup neighbors``: exact chunked cosine search (and faiss when installed), near-duplicate pairs, queries by id
or by image, one-line errors, and an escaped self-contained HTML gallery viewed in headless chromium."""
from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from usekit import MARKUP_NAME, image_folder, tiny_run

from selfsup.cli.main import main
from selfsup.use.search import duplicate_pairs, load_embeddings, search, unit_rows


def random_unit(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def test_chunked_search_equals_brute_force_and_never_returns_the_query_itself():
    db = random_unit(57)
    q = db[[0, 5, 56]]
    idx, sims = search(db, q, 6, exclude=torch.tensor([0, 5, 56]), index="exact", chunk=10)
    full = q @ db.T
    full[[0, 1, 2], [0, 5, 56]] = -2
    ref_s, ref_i = full.topk(6, dim=1)
    np.testing.assert_array_equal(idx, ref_i.numpy())
    np.testing.assert_allclose(sims, ref_s.numpy(), rtol=1e-6)
    assert not any(e in row for e, row in zip((0, 5, 56), idx.tolist()))


def test_duplicate_pairs_are_every_pair_above_the_threshold_once():
    db = random_unit(40, d=3, seed=1)  # 3 dimensions: many close pairs
    got = {(i, j) for i, j, _ in duplicate_pairs(db, 0.9, chunk=7)}
    s = db @ db.T
    ref = {(i, j) for i in range(40) for j in range(i + 1, 40) if s[i, j] >= 0.9}
    assert got == ref and ref


def test_faiss_index_gives_the_exact_answer():
    pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu)")
    db = random_unit(300, d=16, seed=2)
    q = db[:20]
    exact = search(db, q, 5, exclude=torch.arange(20), index="exact")
    fast = search(db, q, 5, exclude=torch.arange(20), index="faiss")
    np.testing.assert_array_equal(fast[0], exact[0])
    np.testing.assert_allclose(fast[1], exact[1], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A run, a folder (with an exact duplicate file and a name holding markup), its embeddings in .npz."""
    tmp = tmp_path_factory.mktemp("use-search")
    run = tiny_run(tmp / "run")
    folder = image_folder(tmp / "photos", corrupt=False, markup=True)
    shutil.copy(folder / "c2" / "02.png", folder / "c2" / "copy-of-02.png")
    out = tmp / "emb.npz"
    assert main(["embed", str(run), "--data", str(folder), "--out", str(out)]) == 0
    return {"run": run, "folder": folder, "npz": out, "tmp": tmp}


def one_error(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfsup: error: "), err
    return err[0]


def test_query_by_id_and_by_image_path(embedded, capsys, tmp_path):
    npz, folder = embedded["npz"], embedded["folder"]
    assert main(["neighbors", str(npz), "--query", "c2/02.png", "--k", "3"]) == 0
    out = capsys.readouterr().out
    hits = out.split("c2/02.png:")[1].strip().splitlines()
    assert len(hits) == 3 and hits[0].split()[2] == "c2/copy-of-02.png"  # its exact copy comes first
    image = tmp_path / "query.png"
    shutil.copy(folder / "c1" / "05.png", image)  # outside the folder: embedded with the recorded encoder
    res = tmp_path / "q.csv"
    assert main(["neighbors", str(npz), "--query", str(image), "--k", "2", "--out", str(res)]) == 0
    rows = list(csv.DictReader(res.open()))
    assert rows[0]["neighbor"] == "c1/05.png" and float(rows[0]["cosine"]) > 0.9999


def test_every_embedding_as_a_query_writes_a_csv_beside_the_file(embedded, capsys):
    assert main(["neighbors", str(embedded["npz"]), "--k", "2"]) == 0
    rows = list(csv.DictReader((embedded["tmp"] / "emb.neighbors.csv").open()))
    n = len(load_embeddings(embedded["npz"]).ids)
    assert len(rows) == 2 * n and all(r["query"] != r["neighbor"] for r in rows)


def test_duplicates_csv_finds_the_copied_file(embedded, tmp_path, capsys):
    out = tmp_path / "dups.csv"
    assert main(["neighbors", str(embedded["npz"]), "--duplicates", "0.9999", "--out", str(out)]) == 0
    pairs = {(r["id_a"], r["id_b"]) for r in csv.DictReader(out.open())}
    assert ("c2/02.png", "c2/copy-of-02.png") in pairs or ("c2/copy-of-02.png", "c2/02.png") in pairs


def test_bad_queries_and_k_are_one_line(embedded, capsys, tmp_path):
    npz = embedded["npz"]
    line = one_error(capsys, "neighbors", npz, "--query", "c9/none.png")
    assert "--query 'c9/none.png'" in line and "not an id in" in line and str(npz) in line
    line = one_error(capsys, "neighbors", npz, "--query", "c2/02.png", "--k", "1000")
    assert "--k 1000" in line and "25 other embeddings" in line
    assert "--k" in one_error(capsys, "neighbors", npz, "--k", "0")
    assert "--duplicates" in one_error(capsys, "neighbors", npz, "--duplicates", "1.5")
    assert "no-such.npz" in one_error(capsys, "neighbors", tmp_path / "no-such.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert "junk.npz" in one_error(capsys, "neighbors", junk)


def test_every_format_reads_back_the_same(embedded, tmp_path):
    ref = load_embeddings(embedded["npz"])
    for suffix in (".csv", ".pt"):
        out = tmp_path / f"e{suffix}"
        assert main(["embed", str(embedded["run"]), "--data", str(embedded["folder"]), "--out", str(out)]) == 0
        got = load_embeddings(out)
        assert got.ids == ref.ids and got.labels.tolist() == ref.labels.tolist() and got.classes == ref.classes
        np.testing.assert_allclose(got.vectors, ref.vectors, rtol=1e-6, atol=1e-7)
        assert got.meta["encoder"] == ref.meta["encoder"]


def gallery(embedded, tmp_path, *extra):
    page = tmp_path / "gallery.html"
    assert main(["neighbors", str(embedded["npz"]), "--k", "4", "--html", str(page), *extra]) == 0
    return page


def test_gallery_is_self_contained_and_escaped(embedded, tmp_path):
    html = gallery(embedded, tmp_path, "--query", f"c1/{MARKUP_NAME}", "--query", "c0/00.png").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html and MARKUP_NAME not in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count('src="data:image/png;base64,') == 2 * (1 + 4)  # every query and neighbour has its thumbnail
    pairs = tmp_path / "pairs.html"
    assert main(["neighbors", str(embedded["npz"]), "--duplicates", "0.9999", "--out", str(tmp_path / "d.csv"),
                 "--html", str(pairs)]) == 0
    assert "copy-of-02.png" in pairs.read_text()


def _chromium() -> str:
    """The headless browser, or a skip: the test never installs software."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless browser check skipped: chromium is not installed (e.g. `apt-get install chromium`)")
    return exe


def test_gallery_renders_in_headless_chromium(embedded, tmp_path):
    exe = _chromium()
    page = gallery(embedded, tmp_path, "--query", f"c1/{MARKUP_NAME}", "--query", "c3/03.png")
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--window-size=900,600"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<img ") == 10 and 'src="x"' not in dom  # the name is text: no element came of it
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=120)
    assert shot.is_file(), "chromium wrote no screenshot"
    arr = np.asarray(Image.open(shot).convert("L"))
    assert arr.shape == (600, 900) and arr.std() > 10 and (arr < 100).mean() > 0.003  # thumbnails and text


def test_thumbnails_are_read_only_from_inside_the_folder(embedded, tmp_path):
    from selfsup.use.gallery import Thumbnails

    outside = embedded["folder"].parent / "outside.png"
    shutil.copy(embedded["folder"] / "c0" / "00.png", outside)
    thumbs = Thumbnails(load_embeddings(embedded["npz"]).meta)
    assert thumbs.of_id("c0/00.png").startswith("data:image/png;base64,")
    assert thumbs.of_id("../outside.png") is None and thumbs.of_id(str(outside)) is None
