"""Evaluation protocols: known-structure features give known accuracies; subsets are stratified and seeded;
the runner records seeds/spread/params and the baseline; bad input gets a one-line error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_blobs

from selfsup.backbones.base import build_backbone
from selfsup.cli.main import main
from selfsup.config import ConfigError, build_run_config
from selfsup.data import DataError
from selfsup.data.base import ImageDataset, InMemorySplit
from selfsup.engine.rundir import RunDirError
from selfsup.engine.trainer import pretrain
from selfsup.evaluation.protocols import EvalContext, check_options
from selfsup.evaluation.runner import evaluate_run
from selfsup.evaluation.semi import stratified_subset
from selfsup.evaluation.trainloop import generic_layer_decay_groups
from selfsup.evaluation.transfer import adapt_channels, convert_channels
from selfsup.registry import EVALUATORS

FAST = {"l2_grid": (1e-2,)}  # one L2 value: L-BFGS on separable toy data is slow at tiny L2


def feature_ctx(feats: torch.Tensor, labels: torch.Tensor, n_train: int, **options) -> EvalContext:
    """A context whose cached features are given (the backbone is never called)."""
    n = feats.shape[0]
    imgs = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    data = ImageDataset("synthetic", InMemorySplit(imgs[:n_train], labels[:n_train]),
                        InMemorySplit(imgs[n_train:], labels[n_train:]), classes, (0.5,), (0.5,))
    ctx = EvalContext(torch.nn.Identity(), data, torch.device("cpu"), options={**FAST, **options})
    ctx._cache[("feats", None)] = (feats[:n_train], labels[:n_train], feats[n_train:], labels[n_train:])
    return ctx


def run(ctx: EvalContext, name: str) -> dict:
    ctx.protocol = name
    return EVALUATORS.get(name)(ctx)


@pytest.fixture(scope="module")
def separable():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(240) % 4
    x = torch.cat([4 * torch.nn.functional.one_hot(y, 4).float() + 0.3 * torch.randn(240, 4, generator=g),
                   torch.randn(240, 12, generator=g)], dim=1)
    return x, y


@pytest.fixture(scope="module")
def random_labels():
    g = torch.Generator().manual_seed(1)
    return torch.randn(400, 16, generator=g), torch.randint(0, 4, (400,), generator=g)


@pytest.mark.parametrize("name", ["knn", "linear", "mlp"])
def test_separable_features_are_classified_perfectly(separable, name):
    r = run(feature_ctx(*separable, n_train=160, epochs=20), name)
    assert r["top1"] >= 0.99
    assert r["labelled_images"] == 160 and r["params"]


@pytest.mark.parametrize("name", ["knn", "linear", "mlp"])
def test_random_labels_give_chance(random_labels, name):
    r = run(feature_ctx(*random_labels, n_train=300, epochs=20), name)
    assert 0.1 <= r["top1"] <= 0.42  # chance is 0.25 on 100 test points


def test_knn_reports_k_1_20_200(separable):
    r = run(feature_ctx(*separable, n_train=160), "knn")
    assert {"top1", "top1_k1", "top1_k200"} <= set(r) and r["params"]["k"] == [20, 1, 200]
    assert r["params"]["temperature"] == 0.07


def test_semi_linear_on_features_uses_fraction_of_labels(separable, tmp_path):
    ctx = feature_ctx(*separable, n_train=160)
    ctx.run_dir, ctx.fractions = tmp_path, (0.1, 0.5)
    r = run(ctx, "semi")
    assert r["labelled_images"] == {"top1@10%": 16, "top1@50%": 80}
    assert r["top1@50%"] >= 0.99 and r["top1"] == r["top1@10%"]
    saved = json.loads((tmp_path / r["subset_files"]["top1@10%"]).read_text())
    assert saved["indices"] == stratified_subset(separable[1][:160], 0.1, 0).tolist()


def test_stratified_subset_is_stratified_reproducible_and_in_train():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    a, b, c = stratified_subset(y, 0.1, 0), stratified_subset(y, 0.1, 0), stratified_subset(y, 0.1, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(y[a]).tolist() == [5, 3, 2]
    assert len(set(a.tolist())) == a.numel() and int(a.max()) < y.numel()


def test_subset_is_disjoint_from_test_images():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randperm(120 * 3, generator=g).reshape(120, 1, 1, 3).to(torch.int64)
    train, test = imgs[:80], imgs[80:]  # distinct images by construction
    idx = stratified_subset(torch.arange(80) % 4, 0.25, 0)
    picked = {tuple(v.flatten().tolist()) for v in train[idx]}
    assert picked.isdisjoint({tuple(v.flatten().tolist()) for v in test})


def test_fraction_leaving_a_class_empty_is_an_error():
    y = torch.tensor([0] * 100 + [1] * 3)
    with pytest.raises(ConfigError, match="leaves class 'b' with zero images"):
        stratified_subset(y, 0.1, 0, classes=["a", "b"])


def test_layers_gives_one_value_per_stage():
    torch.manual_seed(0)
    data = make_blobs(n=32, size=16)
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    ctx = EvalContext(bb, data, torch.device("cpu"), options=dict(FAST))
    r = run(ctx, "layers")
    assert [k for k in r if k.startswith("top1@")] == [f"top1@{s}" for s in bb.stage_names]
    assert r["params"]["stages"] == list(bb.stage_names)


def test_layer_decay_groups_cover_every_parameter_once_with_decaying_lr():
    bb = build_backbone("convnet", in_channels=3, width=0.25)
    groups = generic_layer_decay_groups(bb, 1.0, 0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in bb.parameters())
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == 1.0 and lrs[0] == 0.5 ** 3


def test_channel_conversion_is_explicit():
    x = torch.tensor([[[[10]], [[20]], [[30]]]], dtype=torch.uint8)  # (1, 3, 1, 1)
    assert int(convert_channels(x, 1)) == round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)
    assert convert_channels(x[:, :1], 3).flatten().tolist() == [10, 10, 10]
    two = ImageDataset("two", InMemorySplit(torch.zeros(4, 2, 4, 4, dtype=torch.uint8), torch.arange(4)),
                       InMemorySplit(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), torch.arange(2)), ["a"] * 4,
                       (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(DataError, match="2 channels but the backbone expects 3"):
        adapt_channels(two, 3)


def test_unknown_option_is_rejected_before_work():
    with pytest.raises(ConfigError, match="unknown eval option 'kk'"):
        check_options(["knn"], {"kk": 3})
    with pytest.raises(ConfigError, match="'knn' options: k, temperature"):
        check_options(["knn"], {"knn.lr": 3})


# ----- end to end on a tiny pretrained run --------------------------------------------------------------

def _save_npz(path, ds):
    np.savez(path, x_train=ds.train.images.permute(0, 2, 3, 1).numpy(), y_train=ds.train.labels.numpy(),
             x_test=ds.test.images.permute(0, 2, 3, 1).numpy(), y_test=ds.test.labels.numpy())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    _save_npz(root / "blobs.npz", make_blobs(n=32, size=16))
    _save_npz(root / "gray.npz", make_blobs(n=32, channels=1, size=12, seed=1))
    cfg = build_run_config({"method": {"name": "simclr", "proj_hidden_dim": 16, "proj_dim": 8},
                            "data": {"path": str(root / "blobs.npz")}, "backbone": {"name": "convnet", "width": 0.25},
                            "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "log_every": 1}})
    pretrain(cfg, root / "run", quiet=True)
    return root


def test_runner_records_protocol_seeds_spread_and_baseline(tiny_run):
    r = evaluate_run(tiny_run / "run", ["knn", "finetune", "semi", "supervised"], device="cpu", seeds=2, epochs=1,
                     fractions=[0.5], options={"batch_size": 8, "semi.mode": "finetune"}, quiet=True)
    saved = json.loads((tiny_run / "run" / "eval.json").read_text())
    assert saved["finetune"]["seeds"] == [0, 1] and len(saved["finetune"]["metrics"]["top1"]["values"]) == 2
    assert "top1_std" in saved["finetune"] and saved["finetune"]["params"]["lr_backbone"] == 0.01
    assert saved["knn"]["repeats"] == 1 and "deterministic" in saved["knn"]["note"]
    assert saved["semi"]["labelled_images"] == {"top1@50%": 16}
    assert (tiny_run / "run" / "label-subsets" / "frac0.5-seed1.json").exists()
    assert set(saved["baseline"]) == {"knn", "finetune", "semi"}  # supervised does not depend on the weights
    assert saved["supervised"]["params"]["init"].startswith("random")
    assert saved["protocol"]["seconds"]["trained"].keys() == {"knn", "finetune", "semi", "supervised"}
    assert r["protocol"]["seeds"] == [0, 1]


def test_layers_plot_and_transfer_with_channel_conversion(tiny_run):
    r = evaluate_run(tiny_run / "run", ["layers", "transfer"], device="cpu", quiet=True,
                     options={"l2_grid": [1e-2], "transfer.data": str(tiny_run / "gray.npz")})
    assert (tiny_run / "run" / "layers.png").stat().st_size > 1000 and r["layers"]["plot"] == "layers.png"
    assert r["transfer"]["params"]["channel_conversion"].startswith("grayscale → RGB")
    assert r["transfer"]["params"]["image_size"] == [16, 16]
    again = evaluate_run(tiny_run / "run", ["knn"], device="cpu", quiet=True)  # same checkpoint: results merge
    assert {"layers", "transfer", "knn"} <= set(again) and {"layers", "knn"} <= set(again["baseline"])
    assert set(again["protocol"]["kept_from_previous_eval"]) >= {"layers", "transfer"}


def test_eval_data_with_other_channels_is_converted_and_recorded(tiny_run):
    r = evaluate_run(tiny_run / "run", ["knn"], eval_data=str(tiny_run / "gray.npz"), device="cpu", quiet=True,
                     baseline=False)
    assert r["protocol"]["channel_conversion"].startswith("grayscale → RGB") and r["protocol"]["transfer"]


def test_run_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="no checkpoint found"):
        evaluate_run(tmp_path, ["knn"], device="cpu")


def test_seeds_zero_is_a_one_line_cli_error(tiny_run, capsys):
    assert main(["eval", str(tiny_run / "run"), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seeds must be >= 1" in err and "\n" not in err


def test_semi_fraction_leaving_class_empty_via_cli(tiny_run, capsys):
    assert main(["eval", str(tiny_run / "run"), "--protocol", "semi", "--fractions", "0.01", "--no-baseline"]) == 2
    assert "leaves class" in capsys.readouterr().err
