"""Bad runs, checkpoints and data for ``test_bad_inputs.py``: each kind is made from a real tiny run or dataset
(foreign checkpoints from its real checkpoint, corrupt data from a valid archive), and the cases that use them
with ``eval``, ``export``, ``pretrain --resume``, ``report``, ``compare`` and ``--data``/``--eval-data``.
"""
from __future__ import annotations

import copy
import io
import itertools
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from badinput_cases import Case, pretrain


# ------------------------------------------------------------------------------------ foreign checkpoints
def _tv_resnet18() -> dict[str, torch.Tensor]:
    import torchvision

    return torchvision.models.resnet18().state_dict()


def _shapes(good: dict[str, Any]) -> dict[str, Any]:
    ck = copy.deepcopy(good)
    ck["method"] = {k: torch.zeros(*(s + 1 for s in v.shape)) if v.ndim else v for k, v in ck["method"].items()}
    return ck


def _drop(good: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in good.items() if k != key}


def _with(good: dict[str, Any], **kw: Any) -> dict[str, Any]:
    ck = dict(good)
    ck.update(kw)
    return ck


def _other_method(good: dict[str, Any]) -> dict[str, Any]:
    ck = copy.deepcopy(good)
    ck["config"]["method"] = {"name": "byol"}
    ck["method_name"] = "byol"
    return ck


def _bytes(b: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda good: b


def _saved(obj_fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], bytes]:
    def make(good: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        torch.save(obj_fn(good), buf)
        return buf.getvalue()
    return make


def _not_torch_zip(good: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("weights/readme.txt", "not a checkpoint")
    return buf.getvalue()


def _truncated(good: dict[str, Any]) -> bytes:
    b = _saved(lambda g: g)(good)
    return b[: len(b) // 2]


FOREIGN: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "plain-dict": _saved(lambda g: {"a": 1, "b": "two"}),
    "torchvision-resnet18": _saved(lambda g: _tv_resnet18()),
    "bare-state-dict": _saved(lambda g: dict(g["method"])),
    "list": _saved(lambda g: [1, 2, 3]),
    "tensor": _saved(lambda g: torch.zeros(3, 3)),
    "int": _saved(lambda g: 5),
    "none": _saved(lambda g: None),
    "string": _saved(lambda g: "checkpoint"),
    "no-method": _saved(lambda g: _drop(g, "method")),
    "method-is-list": _saved(lambda g: _with(g, method=[1, 2])),
    "method-not-tensors": _saved(lambda g: _with(g, method={"w": 1.0})),
    "step-is-text": _saved(lambda g: _with(g, step="ten")),
    "no-config": _saved(lambda g: _drop(g, "config")),
    "config-is-list": _saved(lambda g: _with(g, config=[1])),
    "config-invalid": _saved(lambda g: _with(g, config={**g["config"], "backbone": {**g["config"]["backbone"],
                                                                                     "width": "wide"}})),
    "data-info-bogus": _saved(lambda g: _with(g, data={"channels": 10**9, "image_size": [16, 16], "num_train": 2})),
    "wrong-shapes": _saved(_shapes),
    "renamed-keys": _saved(lambda g: _with(g, method={"x." + k: v for k, v in g["method"].items()})),
    "other-method": _saved(_other_method),
    "empty-file": _bytes(b""),
    "truncated": _truncated,
    "text-file": _bytes(b"these are not the weights you are looking for\n"),
    "zip-not-torch": _not_torch_zip,
    "random-bytes": _bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
}
RESUME_ONLY = {  # loadable for eval/export, but training cannot continue from them
    "no-optimizer": _saved(lambda g: _drop(g, "optimizer")),
    "rng-is-int": _saved(lambda g: _with(g, rng=3)),
}


def make_foreign_run(base_run: Path, dest: Path, content: bytes) -> Path:
    """A copy of ``base_run``'s files (not its checkpoints) with ``content`` as its only checkpoint."""
    dest.mkdir(parents=True)
    for p in base_run.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)
    (dest / "checkpoints").mkdir()
    (dest / "checkpoints" / "step-00000002.pt").write_bytes(content)
    return dest


def foreign_cases() -> list[Case]:
    cases = []
    ck = "step-00000002.pt"
    for kind in FOREIGN:
        run = f"foreign-{kind}"
        cases += [Case(f"eval foreign checkpoint {kind}", ("eval", "{run}", "--no-baseline", "--protocol", "knn"),
                       (ck,), run=run),
                  Case(f"export foreign checkpoint {kind}", ("export", "{run}", "--out", "{out}/b.safetensors"),
                       (ck,), run=run),
                  Case(f"pretrain --resume foreign checkpoint {kind}", _resume_argv(), (ck,), run=run)]
    for kind in RESUME_ONLY:
        cases.append(Case(f"pretrain --resume foreign checkpoint {kind}", _resume_argv(), (ck,), run=f"foreign-{kind}"))
    return cases


def _resume_argv() -> tuple[str, ...]:
    argv = list(pretrain("--resume", "--max-steps", "4"))
    argv[argv.index("{out}")] = "{run}"
    return tuple(argv)


# ------------------------------------------------------------------------------------ code-running pickles
PROTOCOLS = (2, 3, 4, 5)


def payload_kinds(marker: Path) -> dict[str, tuple[Callable, tuple]]:
    """Callables an unpickler would run, each leaving a trace if it ran (a marker file made or removed)."""
    import builtins
    import os
    import posix
    import shutil as sh
    import subprocess
    import sys

    keep_file, keep_dir = marker.with_suffix(".keep"), marker.with_suffix(".keepdir")
    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "posix.system": (posix.system, (f"touch {marker}",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').write('ran')",)),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w').write('ran')",)),
        "os.remove": (os.remove, (str(keep_file),)),
        "shutil.rmtree": (sh.rmtree, (str(keep_dir),)),
        "sys.exit": (sys.exit, (7,)),
        "os.kill": (os.kill, (os.getpid(), 0)),
        "builtins.getattr": (getattr, ("text", "upper")),
        "builtins.__import__": (builtins.__import__, ("antigravity",)),
    }


class Payload:
    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def malicious_bytes(good: dict[str, Any], fn: Callable, args: tuple, protocol: int) -> bytes:
    buf = io.BytesIO()
    torch.save({**good, "extra": Payload(fn, args)}, buf, pickle_protocol=protocol)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ corrupt data
def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_files() -> dict[str, bytes]:
    g = np.random.default_rng(1)
    x = g.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    ok = {"x_train": x, "y_train": y, "x_test": x[:6], "y_test": y[:6]}
    files = {
        "wrong-keys.npz": _npz(images=x, labels=y),
        "float-images.npz": _npz(**{**ok, "x_train": x.astype(np.float32)}),
        "int64-images.npz": _npz(**{**ok, "x_train": x.astype(np.int64)}),
        "uint16-images.npz": _npz(**{**ok, "x_train": x.astype(np.uint16)}),
        "bool-images.npz": _npz(**{**ok, "x_train": x > 100}),
        "3d-images.npz": _npz(**{**ok, "x_train": x[..., 0]}),
        "5d-images.npz": _npz(**{**ok, "x_train": x[:, None]}),
        "zero-images.npz": _npz(**{**ok, "x_train": x[:0], "y_train": y[:0]}),
        "2-channels.npz": _npz(**{**ok, "x_train": x[..., :2]}),
        "0-px.npz": _npz(**{**ok, "x_train": x[:, :0, :0]}),
        "labels-short.npz": _npz(**{**ok, "y_train": y[:5]}),
        "labels-2d.npz": _npz(**{**ok, "y_train": np.stack([y, y], 1)}),
        "labels-float.npz": _npz(**{**ok, "y_train": y + 0.5}),
        "labels-negative.npz": _npz(**{**ok, "y_train": -y - 1}),
        "labels-1e12.npz": _npz(**{**ok, "y_train": np.full(12, 10**12)}),
        "labels-1e9.npz": _npz(**{**ok, "y_test": np.full(6, 10**9)}),
        "labels-uint64.npz": _npz(**{**ok, "y_train": np.full(12, 2**63 + 5, dtype=np.uint64)}),
        "labels-text.npz": _npz(**{**ok, "y_train": np.array(["a"] * 12)}),
        "test-size-differs.npz": _npz(**{**ok, "x_test": g.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)}),
        "random-bytes.npz": g.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "truncated.npz": _npz(**ok)[:900],
        "empty.npz": b"",
        "text.npz": b"x_train,y_train\n1,2\n",
    }
    obj = io.BytesIO()
    np.savez(obj, x_train=np.array([{"a": 1}] * 3, dtype=object), y_train=y[:3])
    files["object-array.npz"] = obj.getvalue()
    return files


def _png(size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def folder_specs() -> dict[str, tuple[dict[str, bytes], str]]:
    """name → ({relative path: bytes}, expected outcome)."""
    good = _png()
    bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 30
    return {
        "empty-folder": ({}, "error"),
        "only-text": ({"a.txt": b"x", "b/readme.md": b"y"}, "error"),
        "empty-class-folders": ({"cat/.keep": b"", "dog/.keep": b""}, "error"),
        "all-corrupt": ({"cat/a.png": bad, "cat/b.jpg": b"not a jpeg", "dog/c.png": b""}, "error"),
        "zero-byte-images": ({"a.png": b"", "b.png": b""}, "error"),
        "one-corrupt-beside-good": ({**{f"cat/{i}.png": good for i in range(6)}, **{f"dog/{i}.png": good
                                     for i in range(6)}, "dog/bad.png": bad}, "skip"),
    }


def data_cases() -> list[Case]:
    cases = []
    for name in npz_files():
        cases.append(Case(f"pretrain --data {name}", pretrain("--data", "{f}"), (name,), file=name))
        cases.append(Case(f"eval --eval-data {name}", ("eval", "{run}", "--no-baseline", "--protocol", "knn",
                                                       "--eval-data", "{f}"), (name,), file=name))
    for name, (_, expect) in folder_specs().items():
        argv = pretrain("--data", "{f}", "--image-size", "16")
        cases.append(Case(f"pretrain --data folder {name}", argv, (name,), expect=expect, file=name))
        if expect == "error":
            cases.append(Case(f"eval --eval-data folder {name}", ("eval", "{run}", "--no-baseline", "--protocol",
                                                                  "knn", "--eval-data", "{f}"), (name,), file=name))
    cases += [Case("pretrain --data missing.npz", pretrain("--data", "/no/such.npz"), ("/no/such.npz",)),
              Case("pretrain --data not-a-dataset", pretrain("--data", "nosuch-dataset"), ("nosuch-dataset",)),
              Case("pretrain --data ''", pretrain("--data", ""), ("--data", "data.path"))]
    return cases


# ------------------------------------------------------------------------------------ eval, export, report, compare
EVAL = ("eval", "{run}", "--no-baseline")
BAD_PROTOCOLS = ("nosuch", "", "KNN", "knn,linear", "knn linear", "../knn")
OPTION_KEYS = ("k", "knn.k", "temperature", "knn.temperature", "l2_grid", "linear.l2_grid")
OPTION_VALUES = ("abc", "[x]", "null", "{a: 1}", "[1, [2]]")


def eval_cases() -> list[Case]:
    cases = [Case(f"eval --protocol {p!r}", (*EVAL, "--protocol", p), ("protocol", p or "''")) for p in BAD_PROTOCOLS]
    for key, v in itertools.product(OPTION_KEYS, OPTION_VALUES):
        cases.append(Case(f"eval --set {key}={v}", (*EVAL, "--protocol", "knn", "--protocol", "linear", "--set",
                                                    f"{key}={v}"), (key,)))
    for item in ("nosuch=1", "knn.nosuch=1", "linear.k=3", "semi.x=1", "=3", "k", "k=0", "k=-1", "knn.temperature=0",
                 "temperature=-1", "k=[]", "k=1.5"):
        word = item.split("=")[0] or "--set"
        cases.append(Case(f"eval --set {item!r}", (*EVAL, "--protocol", "knn", "--set", item), (word,)))
    for flag, values in {"--seeds": ("0", "-1", "abc", "1000000000"), "--epochs": ("0", "-1", "abc"),
                         "--fractions": ("0", "2", "abc", "0.1,", "nan", "-0.1", ""),
                         "--device": ("nosuch", "cuda:x", "tpu", "cuda:99")}.items():
        for v in values:
            cases.append(Case(f"eval {flag}={v!r}", (*EVAL, "--protocol", "knn", flag, v), (flag, flag.lstrip("-"))))
    for name, needle in (("missing", "missing"), ("file", "runs/file"), ("empty-dir", "empty-dir"),
                         ("empty-checkpoints", "empty-checkpoints"), ("other-files", "other-files")):
        for cmd in (("eval", f"{{tmp}}/runs/{name}", "--no-baseline"),
                    ("export", f"{{tmp}}/runs/{name}", "--out", "{out}/b.pt", "--format", "pt")):
            cases.append(Case(f"{cmd[0]} run dir {name}", cmd, (needle,)))
    cases.append(Case("eval eval.json is a directory", ("eval", "{run}", "--no-baseline", "--protocol", "knn"),
                      ("eval.json",), run="evaljson-dir"))
    return cases


def export_cases() -> list[Case]:
    cases = [Case(f"export --format {f!r}", ("export", "{run}", "--format", f, "--out", "{out}/b"), ("--format",))
             for f in ("tflite", "", "PT", "safetensors ", "torchscript", "pt,safetensors")]
    cases += [Case("export --out under a regular file", ("export", "{run}", "--out", "{tmp}/a-file/b.safetensors"),
                   ("a-file",)),
              Case("export --out an existing directory", ("export", "{run}", "--out", "{tmp}/runs/empty-dir"),
                   ("empty-dir",)),
              Case("export --out ''", ("export", "{run}", "--out", ""), ("--out", "export", "''", "."))]
    return cases


def report_compare_cases() -> list[Case]:
    cases = []
    for name in ("missing", "file", "empty-dir"):
        cases.append(Case(f"report run dir {name}", ("report", f"{{tmp}}/runs/{name}", "--out", "{out}/r.html"),
                          (name, "report")))
        cases.append(Case(f"compare run dir {name}", ("compare", f"{{tmp}}/runs/{name}", "--out", "{out}/c"),
                          (name, "compare")))
    # a run directory whose files are all damaged (not UTF-8, not JSON, a cut checkpoint) is still a run
    # directory: report and compare are tolerant by design, each missing input a note in its section or row
    cases.append(Case("report run dir garbage (sections with notes)", ("report", "{tmp}/runs/garbage", "--out",
                                                                      "{out}/r.html"), expect="ok"))
    cases.append(Case("compare run dir garbage (a row with notes)", ("compare", "{tmp}/runs/garbage", "--out",
                                                                   "{out}/c"), expect="ok"))
    cases += [Case("report --out without .html", ("report", "{run}", "--out", "{out}/report.txt"), ("--out", ".html")),
              Case("report --out under a regular file", ("report", "{run}", "--out", "{tmp}/a-file/r.html"),
                   ("a-file",)),
              Case("compare --out under a regular file", ("compare", "{run}", "--out", "{tmp}/a-file/c"), ("a-file",)),
              Case("compare a file and an empty folder beside a run", ("compare", "{run}", "{tmp}/runs/file",
                   "{tmp}/runs/empty-dir", "--out", "{out}/c"), ("skipped 2 paths",), expect="skip")]
    for flag, v in (("--tsne-points", "-1"), ("--tsne-points", "abc"), ("--queries", "-1"), ("--preview", "-1"),
                    ("--preview", str(10**9)), ("--data", "/no/such/data")):
        cases.append(Case(f"report {flag}={v}", ("report", "{run}", "--out", "{out}/r.html", flag, v), (flag, v)))
    return cases


def make_bad_run_dirs(runs: Path, good_run: Path) -> None:
    """runs/missing (absent), runs/file, runs/empty-dir, runs/empty-checkpoints, runs/other-files, runs/garbage."""
    runs.mkdir()
    (runs / "file").write_text("not a run\n")
    (runs / "empty-dir").mkdir()
    (runs / "empty-checkpoints" / "checkpoints").mkdir(parents=True)
    (runs / "other-files" / "checkpoints").mkdir(parents=True)
    (runs / "other-files" / "checkpoints" / "latest.pt").write_bytes(b"x")
    (runs / "other-files" / "config.yaml").write_text("train: {epochs: 1}\n")
    g = runs / "garbage"
    (g / "checkpoints").mkdir(parents=True)
    (g / "config.yaml").write_bytes(b"\xff\xfe: [")
    (g / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": NaN}\n{"step": \n\x00\x01')
    (g / "eval.json").write_text('{"knn": [1, 2], "protocol": 5')
    (g / "run.json").write_text("[]")
    (g / "checkpoints" / "step-00000001.pt").write_bytes(b"garbage")


MALICIOUS_CLI = ("os.system", "posix.system", "subprocess.call", "builtins.exec", "sys.exit")


def malicious_cases() -> list[Case]:
    """A real checkpoint with a code-running payload, as the run's only checkpoint, given to eval, export and
    pretrain --resume: selfsup's refusal line, and nothing ran (checked by the test through marker files)."""
    cases = []
    for payload, protocol in itertools.product(MALICIOUS_CLI, (2, 4)):
        run = f"malicious-{payload}-p{protocol}"
        needles = ("refused: loading it would execute code",)
        cases += [Case(f"eval malicious {payload} protocol {protocol}", ("eval", "{run}", "--no-baseline"), needles,
                       run=run),
                  Case(f"export malicious {payload} protocol {protocol}", ("export", "{run}", "--out", "{out}/b.pt"),
                       needles, run=run),
                  Case(f"pretrain --resume malicious {payload} protocol {protocol}", _resume_argv(), needles, run=run)]
    return cases


# ------------------------------------------------------------------------------------ embed, neighbors
def make_use_files(tmp: Path, run: Path, npz: Path) -> None:
    """``tmp/use/emb.npz`` (embeddings of ``npz`` by ``run``) and ``tmp/use/other-arch.pt``, an export of ``run``
    whose metadata names another architecture (resnet18) than its weights (a convnet)."""
    import json

    from selfsup.cli.main import main

    use = tmp / "use"
    assert main(["embed", str(run), "--data", str(npz), "--out", str(use / "emb.npz")]) == 0
    assert main(["export", str(run), "--format", "pt", "--out", str(use / "other-arch.pt")]) == 0
    (use / "a-dir.npz").mkdir()  # a directory where an output file is asked for
    side = use / "other-arch.pt.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "arch": "resnet18"}))
