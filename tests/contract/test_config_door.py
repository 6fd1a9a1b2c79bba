"""The config door: one typed method section, value ranges declared once on the fields, one-line errors.

``build_run_config`` is where every entry point's config is built and checked; these tests pin what it
guarantees (generated from the field declarations where they can be) and the bad inputs that used to escape it
as tracebacks: a non-mapping section under a named flag, a method that is a number or a list, non-UTF-8 YAML,
64-bit seeds, a view count the method cannot take, and sizes that would allocate without bound.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch
import yaml
from conftest import make_blobs

from selfsup.backbones import build_backbone
from selfsup.cli.config_args import add_run_flags, config_from_args
from selfsup.cli.main import main
from selfsup.config import (
    AugmentConfig,
    BackboneConfig,
    ConfigError,
    DataConfig,
    MethodConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    build_run_config,
)
from selfsup.config_checks import Limits
from selfsup.engine.build import build_run
from selfsup.methods.base import build_method
from selfsup.registry import METHODS

SECTIONS = {"data": DataConfig, "backbone": BackboneConfig, "augment": AugmentConfig, "optim": OptimConfig,
            "train": TrainConfig}


def parse(argv: list[str]) -> RunConfig:
    p = argparse.ArgumentParser()
    add_run_flags(p)
    return config_from_args(p.parse_args(argv))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg.strip(), msg
    return msg


def numeric_fields(cls: type) -> list[dataclasses.Field]:
    out = []
    for f in dataclasses.fields(cls):
        tp = str(f.type)
        if tp.startswith(("int", "float", "tuple[float")) and f.type not in ("bool", "bool | None"):
            out.append(f)
    return out


CONFIG_CLASSES = [(s, c) for s, c in SECTIONS.items()] + [("method", e.obj.Config) for e in METHODS]


# --------------------------------------------------------------------------------------- the typed method section
def test_run_config_method_is_the_methods_own_config():
    cfg = build_run_config({"method": {"name": "moco-v2", "queue_size": 512}})
    assert type(cfg.method) is METHODS.get("moco-v2").Config and isinstance(cfg.method, MethodConfig)
    assert cfg.method.name == "moco-v2" and cfg.method.method_class is METHODS.get("moco-v2")
    assert cfg.method.queue_size == 512 and cfg.method.temperature == 0.2  # v2's own default
    assert cfg.to_dict()["method"] == {"name": "moco-v2", **dataclasses.asdict(cfg.method)}
    assert RunConfig().method.name == "simclr"


def test_every_method_config_carries_its_registered_name():
    for e in METHODS:
        assert e.obj.Config.name == e.name and e.obj.Config.method_class is e.obj, e.name
        assert build_run_config({"method": e.name}).method.name == e.name


def test_build_method_takes_the_typed_section_without_reparsing():
    cfg = build_run_config({"method": {"name": "simclr", "proj_hidden_dim": 16, "proj_dim": 8}})
    m = build_method(cfg.method, build_backbone("convnet", width=0.25))
    assert m.cfg is cfg.method and m.method_name() == "simclr"
    with pytest.raises(ConfigError, match="method 'simclr''s"):
        build_method("byol", build_backbone("convnet", width=0.25), cfg.method)


def test_a_config_yaml_written_before_the_typed_section_still_loads(tmp_path):
    """The config.yaml layout of earlier runs: method as a mapping with its name and every key."""
    old = tmp_path / "config.yaml"
    old.write_text(
        "method:\n  name: byol\n  proj_hidden_dim: 64\n  proj_dim: 32\n  pred_hidden_dim: 64\n  momentum_base: 0.99\n"
        "  momentum_final: 1.0\n  bn_in_heads: true\n"
        "data: {path: mnist5k, image_size: null, test_path: null, workers: 0}\n"
        "backbone: {name: convnet, width: 0.25, cifar_stem: false, patch_size: null}\n"
        "optim: {name: lars, lr: 0.1, weight_decay: 1.0e-06, momentum: 0.9, betas: [0.9, 0.999], warmup_epochs: 1.0,"
        " min_lr_ratio: 0.0, exclude_norm_bias: true, fused: null}\n"
        "train: {epochs: 2, batch_size: 16, seed: 3, device: cpu}\n")
    cfg = build_run_config(yaml.safe_load(old.read_text()))
    assert cfg.method.name == "byol" and cfg.method.momentum_base == 0.99 and cfg.optim.betas == (0.9, 0.999)
    again = build_run_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.to_dict() == cfg.to_dict()


# ------------------------------------------------------------------------------- ranges declared once, generated
@pytest.mark.parametrize("section,cls", CONFIG_CLASSES, ids=[f"{s}-{getattr(c, 'name', '') or c.__name__}"
                                                              for s, c in CONFIG_CLASSES])
def test_every_numeric_field_declares_its_range(section, cls):
    missing = [f.name for f in numeric_fields(cls) if not isinstance(f.metadata.get("limits"), Limits)]
    assert not missing, f"{section} fields without checked(...) limits: {missing}"


def _outside(lim: Limits) -> list[float]:
    out = []
    if lim.gt is not None:
        out.append(lim.gt)
    if lim.ge is not None:
        out.append(lim.ge - 1)
    if lim.lt is not None:
        out.append(lim.lt)
    if lim.le is not None:
        out.append(lim.le + 1)
    if lim.cap is not None:
        out.append(lim.cap * 2)
    return out


def _bad_values():
    for section, cls in CONFIG_CLASSES:
        for f in numeric_fields(cls):
            for v in _outside(f.metadata["limits"]):
                if str(f.type).startswith("int"):
                    v = int(v)
                if str(f.type).startswith("tuple"):
                    v = [v, v]
                yield section, getattr(cls, "name", ""), f.name, v


BAD = list(_bad_values())
assert len(BAD) > 200  # every section and method: the generator found the declarations


@pytest.mark.parametrize("section,method,key,value", BAD, ids=[f"{m or s}.{k}={v}" for s, m, k, v in BAD])
def test_a_value_outside_its_declared_range_is_a_one_line_error_naming_the_key(section, method, key, value):
    raw = {"method": {"name": method or "simclr", key: value}} if section == "method" else {section: {key: value}}
    with pytest.raises(ConfigError) as e:
        build_run_config(raw)
    assert f"{section}.{key}" in one_line(e)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
        build_run_config({"optim": {"lr": value}})


# ------------------------------------------------------------------------------------------- bad inputs, one line
@pytest.mark.parametrize("text", ["train: 5\n", "train: [1, 2]\n", "train: hello\n"])
def test_a_non_mapping_section_with_a_named_flag_is_one_line(tmp_path, text, capsys):
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"--epochs: the config's 'train' section must be a mapping") as e:
        parse(["--config", str(f), "--epochs", "3"])
    one_line(e)
    with pytest.raises(ConfigError, match=r"'train' must be a mapping of keys"):
        parse(["--config", str(f)])
    rc = main(["pretrain", "--config", str(f), "--batch-size", "8", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'train'" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", [5, 0, [], ["simclr"], 1.5, True, ""])
def test_a_method_section_that_is_neither_a_name_nor_a_mapping_is_one_line(tmp_path, method):
    with pytest.raises(ConfigError, match="'method[.']") as e:
        build_run_config({"method": method})
    one_line(e)
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"method": method}))
    with pytest.raises(ConfigError, match="'method[.']"):
        parse(["--config", str(f), "--epochs", "2", "--set", "temperature=0.3"])


@pytest.mark.parametrize("name", [["simclr"], 5, None, {"a": 1}, ""])
def test_a_method_name_that_is_not_a_string_is_one_line(tmp_path, name):
    with pytest.raises(ConfigError, match=r"'method\.name' must be a method name") as e:
        build_run_config({"method": {"name": name}})
    one_line(e)
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"method": {"name": name}}))
    with pytest.raises(ConfigError, match=r"'method\.name'"):
        parse(["--config", str(f), "--set", "temperature=0.3"])


def test_non_utf8_yaml_is_one_line(tmp_path, capsys):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("train:\n  device: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text") as e:
        parse(["--config", str(f)])
    one_line(e)
    assert main(["pretrain", "--config", str(f), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("seed", [2 ** 70, 2 ** 63, -1])
def test_seeds_outside_torchs_64_bit_range_are_refused(seed):
    with pytest.raises(ConfigError, match=r"train\.seed must be in \[0, 2\*\*63\)") as e:
        parse(["--seed", str(seed)])
    one_line(e)


def test_the_largest_seed_builds_a_run():
    seed = 2 ** 63 - 1
    cfg = parse(["--seed", str(seed), "--backbone", "convnet", "--width", "0.25", "--device", "cpu",
                 "--set", "method.proj_hidden_dim=16", "--set", "method.proj_dim=8"])
    build_run(cfg, make_blobs(n=8, size=16), torch.device("cpu"))
    torch.Generator().manual_seed(seed + 1 + 63)  # the per-rank augmentation stream of a 64-rank run


@pytest.mark.parametrize("key,value", [
    ("backbone.width", 1e6), ("data.image_size", 10 ** 6), ("augment.size", 10 ** 6), ("augment.local_size", 10 ** 6),
    ("augment.local_crops", 10 ** 6), ("augment.n_views", 10 ** 6), ("method.queue_size", 10 ** 12),
    ("method.proj_hidden_dim", 10 ** 9),
])
def test_huge_sizes_are_refused_before_anything_is_allocated(key, value):
    section, _, field = key.partition(".")
    raw = {section: {field: value}}
    if section == "method":
        raw["method"]["name"] = "moco-v2" if field == "queue_size" else "simclr"
    with pytest.raises(ConfigError, match=rf"{key} must be <= \S+ \(a cap") as e:
        build_run_config(raw)
    one_line(e)


# -------------------------------------------------------------------------------------------- views per method
MEAN, STD = (0.5,) * 3, (0.25,) * 3


@pytest.mark.parametrize("name,n_views", [("simclr", 1), ("simclr", 3), ("byol", 1), ("moco-v2", 4), ("npid", 2),
                                          ("rotation", 2), ("dino", 1)])
def test_a_view_count_the_method_cannot_take_is_refused_when_the_views_are_built(name, n_views):
    cfg = build_run_config({"method": {"name": name, **getattr(METHODS.get(name), "test_overrides", {})},
                            "backbone": {"name": "convnet", "width": 0.25}, "augment": {"n_views": n_views},
                            "train": {"device": "cpu"}})
    with pytest.raises(ConfigError, match=rf"augment.n_views: method '{name}' takes .*makes {n_views}") as e:
        build_run(cfg, make_blobs(n=8, size=16), torch.device("cpu"))
    one_line(e)


@pytest.mark.parametrize("name,aug", [("dino", {"n_views": 3}), ("swav", {"n_views": 2, "local_crops": 2}),
                                      ("simclr", {"n_views": 2}), ("simclr", {"preset": "byol"})])
def test_view_counts_the_method_takes_are_accepted(name, aug):
    over = {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8} if name == "dino" else \
        {"n_prototypes": 8, "proj_hidden_dim": 16, "proj_dim": 8} if name == "swav" else {}
    cfg = build_run_config({"method": {"name": name, **over}, "backbone": {"name": "convnet", "width": 0.25},
                            "augment": aug, "train": {"device": "cpu"}})
    build_run(cfg, make_blobs(n=8, size=16), torch.device("cpu"))


def test_one_view_for_a_two_view_method_is_one_line_on_the_cli(tmp_path, capsys):
    g = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=g.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    rc = main(["pretrain", "--method", "simclr", "--data", str(data), "--backbone", "convnet", "--width", "0.25",
               "--max-steps", "1", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run"),
               "--quiet", "--set", "augment.n_views=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "augment.n_views" in err[0], err


def test_empty_sections_take_flags_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("method:\ntrain:\n")
    cfg = parse(["--config", str(f), "--epochs", "3", "--set", "train.seed=4", "--set", "temperature=0.3"])
    assert (cfg.train.epochs, cfg.train.seed, cfg.method.name, cfg.method.temperature) == (3, 4, "simclr", 0.3)
