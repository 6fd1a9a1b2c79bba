"""The bad inputs of ``test_bad_inputs.py``, generated: option x bad value, config key x wrong type, file kind x
command. Each case is an argv template (``{run}``, ``{npz}``, ``{out}``, ``{f}`` = a bad file made for it) with
the words its one error line must contain (the option or file) and what the user should get (``error``, a
counted ``skip``, or ``ok`` for a huge-but-legal value that must cost only the real work).
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

from selfsup.config import AugmentConfig, BackboneConfig, DataConfig, OptimConfig, TrainConfig


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...] = ()
    expect: str = "error"  # error | skip | ok
    file: str | None = None  # name of a bad file/dir from files.py that {f} stands for
    run: str = "run"  # the run directory {run} stands for (a pre-made one, or a foreign/malicious copy)
    extra: dict = field(default_factory=dict, hash=False, compare=False)


def pretrain(*args: str) -> tuple[str, ...]:
    return ("pretrain", "--data", "{npz}", "--backbone", "convnet", "--width", "0.25",
            "--batch-size", "8", "--epochs", "1", "--max-steps", "1", "--device", "cpu", "--quiet", "--out", "{out}",
            *args)


# ------------------------------------------------------------------------------------------- pretrain flags
INT_FLAGS = ("--image-size", "--epochs", "--max-steps", "--batch-size", "--seed", "--checkpoint-every", "--knn-every")
FLOAT_FLAGS = ("--width", "--time-limit-min", "--lr")
NOT_A_NUMBER = ("abc", "", "1,2", "0x10", "1e", "--")
NOT_AN_INT = ("1.5", "1e3", "nan")
# semantic: values of the right type that no run can use (or must bound: "ok")
RANGE = {
    "--image-size": ("0", "-1", "1000000"), "--epochs": ("0", "-3"), "--max-steps": ("0", "-1"),
    "--batch-size": ("0", "1", "-8", "1000000"), "--seed": (str(2**70), str(2**64), str(-2**70)),
    "--checkpoint-every": ("-1",), "--knn-every": ("-1",),
    "--width": ("0", "-1", "nan", "inf", "1e6"), "--time-limit-min": ("0", "-1", "nan", "-inf"),
    "--lr": ("-1", "nan", "inf", "-inf"),
}
FLAG_KEY = {"--image-size": "data.image_size", "--epochs": "train.epochs", "--max-steps": "train.max_steps",
            "--batch-size": "train.batch_size", "--seed": "train.seed", "--checkpoint-every": "train.checkpoint_every",
            "--knn-every": "train.knn_every", "--width": "backbone.width", "--time-limit-min": "train.time_limit_min",
            "--lr": "optim.lr"}
NAME_FLAGS = {"--method": "method", "--backbone": "backbone", "--optimizer": "optim", "--device": "device"}
BAD_NAMES = ("nosuch", "", "a b", "x" * 300, "../../etc", "名前", "simclr\nx", "SIMCLR ")


def flag_cases() -> list[Case]:
    cases = []
    for flag, v in itertools.chain(itertools.product(INT_FLAGS + FLOAT_FLAGS, NOT_A_NUMBER),
                                   itertools.product(INT_FLAGS, NOT_AN_INT)):
        cases.append(Case(f"pretrain{flag}={v!r}", pretrain(flag, v), (flag,)))
    for flag, values in RANGE.items():
        for v in values:
            cases.append(Case(f"pretrain{flag}={v}", pretrain(flag, v), (flag, FLAG_KEY[flag])))
    for (flag, word), v in itertools.product(NAME_FLAGS.items(), BAD_NAMES):
        if flag == "--optimizer" and v == "":
            continue  # an empty name is the method's default optimizer
        cases.append(Case(f"pretrain{flag}={v[:12]!r}", pretrain(flag, v), (flag, word, v[:20] or "''")))
    for v in ("cuda:x", "cuda:99", "tpu", "cuda:-1", "meta"):
        cases.append(Case(f"pretrain--device={v}", pretrain("--device", v), ("device", v)))
    cases.append(Case("pretrain--epochs=10**8 (schedule per step)", pretrain("--epochs", str(10**8)), expect="ok"))
    cases += [Case("pretrain--no-such-flag", pretrain("--no-such-flag"), ("--no-such-flag",)),
              Case("pretrain-missing--out", ("pretrain", "--data", "{npz}"), ("--out",)),
              Case("pretrain--resume=never", pretrain("--resume", "never"), ("--resume",)),
              Case("pretrain-positional", pretrain("stray"), ("stray",))]
    return cases


# ------------------------------------------------------------------------------------------- --set overrides
SECTIONS = {"data": DataConfig, "backbone": BackboneConfig, "augment": AugmentConfig, "optim": OptimConfig,
            "train": TrainConfig}
WRONG_TYPE = ("[1, 2]", "{a: 1}")
SET_RANGE = {
    "augment.size": ("0", "-4", "1000000"), "augment.n_views": ("1", "0", "1000000"),
    "augment.local_crops": ("-1", "1000000"), "augment.local_size": ("0",),
    "augment.crop_scale_min": ("0", "2", "-0.5", "nan"), "augment.crop_scale_max": ("0", "1.5"),
    "augment.jitter_p": ("1.5", "-0.1"), "augment.blur_p": ("2",), "augment.flip_p": ("nan",),
    "augment.jitter_strength": ("-1",), "augment.preset": ("nosuch",), "method.name": ("nosuch", "[simclr]"),
    "backbone.patch_size": ("0",), "data.image_size": ("0", "1000000"), "data.workers": ("-1",),
    "data.test_path": ("/no/such/test/data",), "data.path": ("/no/such/data.npz",),
    "data.full_image_scale": ("0.5", "nan", "100"), "data.full_image": ("true",),  # true: the data is a .npz
    "train.keep_checkpoints": ("-1",),
    "optim.momentum": ("-1", "nan"), "optim.betas": ("[2, 3]", "[0.9]", "[0.9, 0.99, 0.1]"),
    "optim.warmup_epochs": ("-1", "nan"), "optim.min_lr_ratio": ("-1", "2"), "optim.weight_decay": ("-1", "nan"),
    "optim.name": ("nosuch",),
    "train.grad_accum_steps": ("0", "-1", "3"), "train.log_every": ("0", "-5"), "train.dist_timeout_min": ("0", "-1"),
    "train.grad_clip": ("-1", "0", "nan"), "train.nan_policy": ("ignore",), "train.precision": ("fp8", "fp16"),
    "train.device": ("gpu",),
}
METHOD_SET = {"simclr": {"temperature": ("0", "-1", "nan", "abc", "[1]")},
              "moco-v2": {"queue_size": ("0", "-1", str(10**12)), "momentum": ("2", "-1"), "temperature": ("0",)},
              "dino": {"local_crops": (str(10**6), "-1"), "out_dim": ("0", str(10**9))},
              "swav": {"num_prototypes": ("0", str(10**9))}}
SET_SYNTAX = ("train.epochs", "=3", "train.=3", ".epochs=3", "train..epochs=3", "nosection.epochs=3",
              "train.epochz=3", "trian.epochs=3", "train.epochs.x=3", "method.temprature=0.3", "temprature=0.3",
              "train.epochs=1=2", "train.epochs=!!python/object:os.system x", "train.epochs=*a", "train.epochs=[",
              "train.epochs={", "train.epochs=*", "data=x", "train=5", " =1")


def set_cases() -> list[Case]:
    cases = []
    for section, cls in SECTIONS.items():
        for f, v in itertools.product(dataclasses.fields(cls), WRONG_TYPE):
            key = f"{section}.{f.name}"
            cases.append(Case(f"--set {key}={v}", pretrain("--set", f"{key}={v}"), (key,)))
        for f in dataclasses.fields(cls):  # a number where none fits, a word where a number is due
            key = f"{section}.{f.name}"
            bad = "abc" if "str" not in str(f.type) else "12345"
            if bad == "12345" and key in ("data.path", "data.test_path", "train.device"):
                bad = "-1x"
            cases.append(Case(f"--set {key}={bad}", pretrain("--set", f"{key}={bad}"), (key, bad)))
    for key, values in SET_RANGE.items():
        for v in values:
            needles = (key, v) if "/" in v or key.endswith((".preset", ".name")) else (key,)
            needles += ("--image-size",) if key == "data.image_size" else ()
            cases.append(Case(f"--set {key}={v} (range)", pretrain("--set", f"{key}={v}"), needles))
    for method, keys in METHOD_SET.items():
        for k, values in keys.items():
            for v in values:
                cases.append(Case(f"--method {method} --set method.{k}={v}",
                                  pretrain("--method", method, "--set", f"method.{k}={v}"), (f"method.{k}", k)))
    for item in SET_SYNTAX:
        word = item.split("=")[0].strip(" .") or "--set"
        cases.append(Case(f"--set {item!r}", pretrain("--set", item), ("--set", word, item.split(".")[0] or "--set")))
    return cases


# ------------------------------------------------------------------------------------------- config files
SECTION_VALUES = ("5", "[1, 2]", "abc", "true", "1.5")
NAMED_FLAG = {"train": ("--epochs", "1"), "data": ("--image-size", "16"), "backbone": ("--width", "0.25"),
              "optim": ("--lr", "0.1"), "augment": ()}


def yaml_files() -> dict[str, bytes]:
    files = {f"sec-{s}-{i}.yaml": f"{s}: {v}\n".encode() for s in NAMED_FLAG for i, v in enumerate(SECTION_VALUES)}
    files.update({
        "method-5.yaml": b"method: 5\n", "method-list.yaml": b"method: [simclr, byol]\n",
        "method-name-list.yaml": b"method:\n  name: [simclr, byol]\n", "method-name-int.yaml": b"method:\n  name: 5\n",
        "method-name-nosuch.yaml": b"method:\n  name: nosuch\n", "method-name-map.yaml": b"method:\n  name: {a: 1}\n",
        "top-list.yaml": b"- train\n- data\n", "top-scalar.yaml": b"42\n", "top-string.yaml": b"just words\n",
        "non-utf8.yaml": b"train:\n  epochs: \xff\xfe\x00\x81\n", "latin1.yaml": "data:\n  path: caf\xe9\n".encode("latin-1"),
        "syntax.yaml": b"train: {epochs: [1, 2\n", "tabs.yaml": b"train:\n\tepochs: 1\n",
        "deep.yaml": b"train: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "deep-map.yaml": b"".join(b"  " * i + b"k%d:\n" % i for i in range(3000)) + b"  " * 3000 + b"x\n",
        "python-tag.yaml": b"train: !!python/object/apply:os.system ['true']\n",
        "laughs.yaml": b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       b"train: {epochs: *d}\n",
        "unknown-section.yaml": b"trian: {epochs: 1}\n", "unknown-key.yaml": b"train: {epochz: 1}\n",
        "null-key.yaml": b"train: {null: 1}\n", "int-key.yaml": b"train: {1: 1}\n",
        "binary.yaml": bytes(range(256)) * 4, "bom-garbage.yaml": b"\xef\xbb\xbf\x00\x00\x00",
        "dup-key.yaml": b"train: {epochs: 1}\ntrain: 5\n",
    })
    return files


def yaml_cases() -> list[Case]:
    cases = []
    for name in yaml_files():
        needles = (name,)
        cases.append(Case(f"--config {name}", pretrain("--config", "{f}"), needles, file=name))
        sec = name.split("-")[1] if name.startswith("sec-") else None
        if sec and NAMED_FLAG[sec]:
            cases.append(Case(f"--config {name} {NAMED_FLAG[sec][0]}", pretrain("--config", "{f}", *NAMED_FLAG[sec]),
                              needles, file=name))
        if sec:
            cases.append(Case(f"--config {name} --set", pretrain("--config", "{f}", "--set", f"{sec}.x=1"),
                              needles + (f"{sec}.x",), file=name))
    cases += [Case("--config missing.yaml", pretrain("--config", "/no/such/config.yaml"), ("/no/such/config.yaml",)),
              Case("--config nosuch-preset", pretrain("--config", "nosuch-preset"), ("nosuch-preset",)),
              Case("--config a directory", pretrain("--config", "{tmp}"), ("--config", "{tmp}"))]
    return cases


# ------------------------------------------------------------------------------------ select, finetune, predict
def _npz_bytes(**arrays) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def select_classify_files() -> dict[str, bytes]:
    """Embeddings files (for select), selection files (for eval --selection) and labelled data (for finetune)."""
    import numpy as np

    g = np.random.default_rng(2)
    x = g.normal(size=(24, 8)).astype(np.float32)
    ids = np.array([str(i) for i in range(24)])
    imgs = g.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    return {
        "emb-good.npz": _npz_bytes(embeddings=x, ids=ids, labels=np.arange(24) % 3),
        "emb-no-embeddings.npz": _npz_bytes(features=x, ids=ids),
        "emb-no-ids.npz": _npz_bytes(embeddings=x),
        "emb-int.npz": _npz_bytes(embeddings=(x * 10).astype(np.int64), ids=ids),
        "emb-1d.npz": _npz_bytes(embeddings=x[:, 0], ids=ids),
        "emb-ids-short.npz": _npz_bytes(embeddings=x, ids=ids[:5]),
        "emb-nan.npz": _npz_bytes(embeddings=np.full_like(x, np.nan), ids=ids),
        "emb-pickled-ids.npz": _npz_bytes(embeddings=x, ids=np.array([{"a": 1}] * 24, dtype=object)),
        "emb-not-a-zip.npz": b"embeddings,ids\n1,2\n",
        "sel-unknown-ids.txt": b"0\n1\n999\n",
        "sel-one-id.txt": b"3\n",
        "sel-empty.txt": b"\n\n",
        "sel-binary.txt": b"\xff\xfe\x00\x01",
        "one-class.npz": _npz_bytes(x_train=imgs, y_train=np.zeros(12, np.int64)),
        "unlabelled.npz": _npz_bytes(x_train=imgs),
    }


def select_classify_setup(main, tmp, run, npz) -> None:
    """Bad inputs' files, a classifier trained on the tiny run, a damaged copy of it, a grayscale folder."""
    import io
    import shutil

    import numpy as np
    from PIL import Image

    for name, content in select_classify_files().items():
        (tmp / "files" / name).write_bytes(content)
    assert main(["finetune", str(run), "--data", str(npz), "--out", str(tmp / "classifier"), "--epochs", "1",
                 "--device", "cpu", "--quiet"]) == 0
    shutil.copytree(tmp / "classifier", tmp / "classifier-damaged")
    (tmp / "classifier-damaged" / "model.safetensors").write_bytes(b"\x00" * 40)
    shutil.copytree(tmp / "classifier", tmp / "classifier-no-json")
    (tmp / "classifier-no-json" / "classifier.json").unlink()
    (tmp / "gray-folder").mkdir()
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8), "L").save(buf, format="PNG")
        (tmp / "gray-folder" / f"{i}.png").write_bytes(buf.getvalue())


def select_classify_cases() -> list[Case]:
    sel = ("select", "{f}", "--budget", "3", "--out", "{out}/s.txt")
    good = ("select", "{tmp}/files/emb-good.npz", "--out", "{out}/s.txt")
    cases = [Case(f"select {name}", sel, (name,), file=name) for name in select_classify_files()
             if name.startswith("emb-") and name != "emb-good.npz"]
    cases += [Case(f"select --budget={b!r}", (*good, "--budget", b), ("--budget",))
              for b in ("25", "1000000", "0", "-1", "abc", "1.5", "")]
    cases += [Case(f"select --strategy={s!r}", (*good, "--budget", "3", "--strategy", s), ("--strategy", "kcenter"))
              for s in ("nosuch", "", "KCENTER", "k-center")]
    embedded = ("select", "{tmp}/use/emb.npz", "--out", "{out}/s.csv")  # written by selfsup embed
    cases += [Case("select embed's file --budget over its train images", (*embedded, "--budget", "25"), ("--budget",)),
              Case("select embed's file", (*embedded, "--budget", "5", "--strategy", "kcenter"), expect="ok")]
    cases += [Case("select missing file", ("select", "{tmp}/no.npz", "--budget", "3", "--out", "{out}/s"), ("no.npz",)),
              Case("select --clusters=0", (*good, "--budget", "3", "--strategy", "cluster-balanced", "--clusters", "0"),
                   ("--clusters",)),
              Case("select --out under a regular file", (*good, "--budget", "3", "--out", "{tmp}/a-file/s.txt"),
                   ("a-file",))]
    semi = ("eval", "{run}", "--no-baseline", "--device", "cpu", "--protocol", "semi", "--selection")
    cases += [Case(f"eval --selection {name}", (*semi, "{f}"), (name,), file=name)
              for name in ("sel-unknown-ids.txt", "sel-one-id.txt", "sel-empty.txt", "sel-binary.txt", "emb-good.npz")]
    cases += [Case("eval --selection missing", (*semi, "{tmp}/no-sel.txt"), ("no-sel.txt",)),
              Case("eval --selection without semi", ("eval", "{run}", "--no-baseline", "--protocol", "knn",
                                                     "--selection", "{tmp}/files/sel-one-id.txt"), ("--selection",))]
    ft = ("finetune", "{run}", "--out", "{out}/clf", "--device", "cpu", "--epochs", "1")
    cases += [Case(f"finetune --data {name}", (*ft, "--data", "{f}"), (name,), file=name)
              for name in ("one-class.npz", "unlabelled.npz", "emb-good.npz")]
    cases += [Case(f"finetune --head={h!r}", (*ft, "--data", "{npz}", "--head", h), ("--head",))
              for h in ("nosuch", "", "Linear")]
    cases += [Case(f"finetune --epochs={e}", ("finetune", "{run}", "--data", "{npz}", "--out", "{out}/c", "--epochs", e),
                   ("--epochs",)) for e in ("0", "-1", "x")]
    cases += [Case(f"finetune source {name}", ("finetune", f"{{tmp}}/runs/{name}", "--data", "{npz}", "--out",
                                               "{out}/c"), (name,)) for name in ("missing", "empty-dir", "file")]
    cases += [Case("finetune --out a regular file", (*ft, "--data", "{npz}", "--out", "{tmp}/a-file"), ("a-file",))]
    pr = ("--out", "{out}/p.csv", "--device", "cpu")
    cases += [Case("predict another channel count", ("predict", "{tmp}/classifier", "--data", "{tmp}/gray-folder", *pr),
                   ("gray-folder", "channel")),
              Case("predict classifier missing", ("predict", "{tmp}/no-classifier", "--data", "{npz}", *pr),
                   ("no-classifier",)),
              Case("predict classifier weights damaged", ("predict", "{tmp}/classifier-damaged", "--data", "{npz}",
                                                          *pr), ("classifier-damaged",)),
              Case("predict classifier without json", ("predict", "{tmp}/classifier-no-json", "--data", "{npz}", *pr),
                   ("classifier-no-json",)),
              Case("predict a run directory", ("predict", "{run}", "--data", "{npz}", *pr), ("{run}",)),
              Case("predict --top-k=0", ("predict", "{tmp}/classifier", "--data", "{npz}", "--top-k", "0", *pr),
                   ("--top-k",)),
              Case("predict --data missing", ("predict", "{tmp}/classifier", "--data", "{tmp}/nodata", *pr),
                   ("nodata",))]
    return cases


# ------------------------------------------------------------------------------------------- pretrain --init
class GetCwd:
    """A pickled call (harmless: os.getcwd) inside a state dict: the file must be refused, not loaded."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def init_files() -> dict[str, bytes]:
    import json

    import torch
    from safetensors.torch import save

    return {
        "init-list.pth": _torch_bytes([1, 2, 3]),
        "init-text.pth": b"these are not weights\n",
        "init-code.pth": _torch_bytes({"conv1.weight": torch.zeros(1), "x": GetCwd()}),
        "init-shape.pth": _torch_bytes({"conv1.weight": torch.zeros(64, 3, 7, 7)}),  # full width into width 0.25
        "init-vit-export.safetensors": save({"cls_token": torch.zeros(1, 1, 8)},
                                            metadata={"selfsup": json.dumps({"arch": "vit-tiny"})}),
    }


def init_cases() -> list[Case]:
    resnet = ("--backbone", "resnet18")
    return [
        Case("pretrain --init missing", pretrain("--init", "{tmp}/no-such-weights.pth"),
             ("backbone.init", "no-such-weights.pth", "not found")),
        Case("pretrain --init not a state dict", pretrain("--init", "{f}"), ("init-list.pth", "not a state dict"),
             file="init-list.pth"),
        Case("pretrain --init a text file", pretrain("--init", "{f}"), ("init-text.pth", "not a readable"),
             file="init-text.pth"),
        Case("pretrain --init pickled code", pretrain("--init", "{f}"),
             ("init-code.pth", "refused: loading it would execute code"), file="init-code.pth"),
        Case("pretrain --init shape mismatch", pretrain(*resnet, "--init", "{f}"),
             ("backbone.init", "conv1.weight", "(64, 3, 7, 7)", "(16, 3, 7, 7)"), file="init-shape.pth"),
        Case("pretrain --init an export of another architecture", pretrain("--init", "{f}"),
             ("backbone.init", "vit-tiny", "convnet"), file="init-vit-export.safetensors"),
        Case("export --format onnx without onnx", ("export", "{run}", "--format", "onnx", "--out", "{out}/b.onnx"),
             ("--format onnx", "onnx package", "pip install"), extra={"hide_modules": ("onnx",)}),
        Case("export --format timm of a convnet", ("export", "{run}", "--format", "timm", "--out", "{out}/f"),
             ("--format timm", "convnet")),
    ]


# ------------------------------------------------------------------------------------------- embed, neighbors
# {tmp}/use/ holds what badinput_runs.make_use_files writes: emb.npz (embeddings of {npz} by {run}) and
# other-arch.pt, an export of {run} whose metadata claims another architecture than its weights are, and
# a-dir.npz, a directory.
EMB = "{tmp}/use/emb.npz"


def use_embed_cases() -> list[Case]:
    embed = ("embed", "{run}", "--data", "{npz}", "--out")
    return [
        Case("embed a folder with a corrupt file (counted skip)", ("embed", "{run}", "--data", "{f}", "--out",
             "{out}/e.npz"), ("skipped 1 of 13", "bad.png"), expect="skip", file="one-corrupt-beside-good"),
        Case("embed an export of another architecture than it claims", ("embed", "{tmp}/use/other-arch.pt", "--data",
             "{npz}", "--out", "{out}/e.npz"), ("other-arch.pt", "resnet18")),
        Case("embed --out with an unknown suffix", (*embed, "{out}/e.txt"), ("--out", ".txt")),
        Case("embed --out without a suffix", (*embed, "{out}/e"), ("--out",)),
        Case("embed --out an existing directory", (*embed, "{tmp}/use/a-dir.npz"), ("--out", "a-dir.npz")),
        Case("embed a source that is nothing", ("embed", "{tmp}/no/such/run", "--data", "{npz}", "--out",
             "{out}/e.npz"), ("{tmp}/no/such/run",)),
        Case("embed --batch-size 0", (*embed, "{out}/e.npz", "--batch-size", "0"), ("--batch-size",)),
        Case("embed --data missing", ("embed", "{run}", "--data", "/no/such/data", "--out", "{out}/e.npz"),
             ("/no/such/data",)),
        Case("neighbors --query an id not in the file", ("neighbors", EMB, "--query", "nosuch/id.png"),
             ("--query", "nosuch/id.png")),
        Case("neighbors --k larger than the data", ("neighbors", EMB, "--k", "100000"), ("--k",)),
        Case("neighbors --k 0", ("neighbors", EMB, "--k", "0"), ("--k",)),
        Case("neighbors --duplicates 2", ("neighbors", EMB, "--duplicates", "2"), ("--duplicates",)),
        Case("neighbors --duplicates nan", ("neighbors", EMB, "--duplicates", "nan"), ("--duplicates",)),
        Case("neighbors --html without .html", ("neighbors", EMB, "--html", "{out}/g.txt"), ("--html",)),
        Case("neighbors a missing file", ("neighbors", "{tmp}/use/none.npz"), ("none.npz",)),
        Case("neighbors a file that is not embeddings", ("neighbors", "{npz}"), ("tiny.npz",)),
    ]
