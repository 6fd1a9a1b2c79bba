"""Typed config (YAML, flags, --set) and the CLI: one-line user errors with exit code 2, list, pretrain, run dirs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from selfsup.cli.config_args import add_run_flags, config_from_args
from selfsup.cli.main import main
from selfsup.config import ConfigError, RunConfig, build_run_config
from selfsup.registry import UnknownNameError


def parse(argv: list[str]) -> RunConfig:
    import argparse

    p = argparse.ArgumentParser()
    add_run_flags(p)
    return config_from_args(p.parse_args(argv))


def one_line(msg: str) -> str:
    assert "\n" not in msg.strip(), msg
    return msg


# ----------------------------------------------------------------------------------------------------- config
def test_defaults_build():
    cfg = parse([])
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.2
    assert cfg.train.batch_size is None and cfg.backbone.name == "resnet18"  # None: the method's (256)


def test_unknown_section_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_run_config({"trian": {"epochs": 3}})
    msg = one_line(str(e.value))
    assert "trian" in msg and all(s in msg for s in ("data", "backbone", "augment", "optim", "train"))
    with pytest.raises(ConfigError, match="unknown config key 'trian.epochs'.*sections: .*train"):
        parse(["--set", "trian.epochs=3"])


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epochz' in train; valid keys: .*epochs.*batch_size"):
        build_run_config({"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match=r"train\.epochz.*valid keys: .*epochs"):
        parse(["--set", "train.epochz=3"])
    with pytest.raises(ConfigError, match=r"method\.temprature.*valid keys: .*temperature"):
        parse(["--set", "method.temprature=0.3"])
    with pytest.raises(ConfigError, match="unknown config key 'temprature'.*method keys: .*temperature"):
        parse(["--set", "temprature=0.3"])


@pytest.mark.parametrize("item,match", [
    ("train.epochs=abc", r"'train\.epochs' must be an integer, got 'abc'"),
    ("train.epochs=1.5", r"'train\.epochs' must be an integer"),
    ("optim.lr=fast", r"'optim\.lr' must be a number"),
    ("train.compile=maybe", r"'train\.compile' must be true or false"),
    ("optim.betas=0.9", r"'optim\.betas' must be a list"),
    ("optim.betas=[0.9]", r"'optim\.betas' must have 2 values"),
    ("method.temperature=hot", r"'method\.temperature' must be a number"),
    ("train.epochs", "--set expects key=value"),
    ("a.b.c=1", "unknown config key"),
])
def test_bad_values_give_one_line_config_errors(item, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse(["--set", item])
    one_line(str(e.value))


def test_values_are_coerced():
    cfg = parse(["--set", "optim.lr=1e-3", "--set", "train.compile=true", "--set", "optim.betas=[0.8, 0.9]",
                 "--set", "train.grad_clip=null", "--set", "data.image_size=24"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.compile is True and cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.grad_clip is None and cfg.data.image_size == 24


def test_bare_key_routes_to_the_method_section():
    cfg = parse(["--set", "temperature=0.3"])
    assert cfg.method.temperature == 0.3
    with pytest.raises(ConfigError, match="method.temperature must be > 0"):
        parse(["--set", "temperature=0"])


def test_yaml_then_flags_then_set_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({
        "method": {"name": "simclr", "temperature": 0.4},
        "train": {"epochs": 5, "batch_size": 16, "seed": 3},
        "backbone": {"name": "convnet", "width": 0.5},
    }))
    cfg = parse(["--config", str(f)])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed, cfg.method.temperature) == (5, 16, 3, 0.4)
    cfg = parse(["--config", str(f), "--epochs", "7", "--width", "0.25"])
    assert cfg.train.epochs == 7 and cfg.backbone.width == 0.25 and cfg.train.batch_size == 16
    cfg = parse(["--config", str(f), "--epochs", "7", "--set", "train.epochs=9", "--set", "temperature=0.1"])
    assert cfg.train.epochs == 9 and cfg.method.temperature == 0.1 and cfg.backbone.name == "convnet"


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML") as e:
        parse(["--config", str(bad)])
    one_line(str(e.value))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse(["--config", str(lst)])
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset; presets: .*demo-mnist"):
        parse(["--config", "no-such-preset"])


def test_packaged_presets_load():
    cfg = parse(["--config", "demo-mnist"])
    assert cfg.data.path == "mnist5k" and cfg.backbone.cifar_stem is True


def test_unknown_method_lists_known_names():
    with pytest.raises(UnknownNameError, match="unknown method 'nope'; known: .*simclr") as e:
        parse(["--method", "nope"])
    one_line(str(e.value))


# ----------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_npz(tmp_path):
    g = np.random.default_rng(0)
    p = tmp_path / "tiny.npz"
    np.savez(p, x_train=g.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), y_train=np.arange(24) % 3,
             x_test=g.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), y_test=np.arange(12) % 3)
    return p


def pretrain_args(data, out, *extra):
    return ["pretrain", "--method", "simclr", "--data", str(data), "--backbone", "convnet", "--width", "0.25",
            "--max-steps", "3", "--batch-size", "8", "--device", "cpu", "--out", str(out), "--quiet", *extra]


def assert_user_error(rc, capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "simclr" in out["methods"] and "resnet18" in out["backbones"] and "mnist5k" in out["datasets"]
    assert {"knn", "linear"} <= set(out["protocols"]) and "simclr" in out["augmentations"]
    assert "demo-mnist" in out["presets"]


def test_list_text(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "methods:" in out and "simclr" in out and "convnet" in out


def test_pretrain_then_refuse_second_run_unless_resume_or_overwrite(tiny_npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_args(tiny_npz, out)) == 0
    assert "3 steps" in capsys.readouterr().out
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").is_file() and (out / "run.json").is_file()
    assert list((out / "checkpoints").glob("step-*.pt"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["backbone"]["name"] == "convnet" and saved["train"]["max_steps"] == 3

    rc = main(pretrain_args(tiny_npz, out))
    assert_user_error(rc, capsys, str(out), "already holds a run", "--resume", "--overwrite")

    assert main(pretrain_args(tiny_npz, out, "--overwrite")) == 0
    capsys.readouterr()
    assert main(pretrain_args(tiny_npz, out, "--resume", "--max-steps", "4")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["steps"] == 4
    capsys.readouterr()

    assert main(["eval", str(out), "--protocol", "knn", "--no-baseline", "--device", "cpu"]) == 0
    assert "knn" in capsys.readouterr().out
    ev = json.loads((out / "eval.json").read_text())
    assert "knn" in ev and "baseline" not in ev and ev["protocol"]["step"] == 4
    rc = main(["eval", str(out), "--protocol", "nope"])
    assert_user_error(rc, capsys, "unknown evaluator 'nope'", "knn", "linear")


def test_resume_without_a_checkpoint_starts_fresh(tiny_npz, tmp_path, capsys):
    """``--resume`` means ``--resume auto``: a requeued job whose first attempt died before any checkpoint
    starts from scratch instead of failing."""
    rc = main(pretrain_args(tiny_npz, tmp_path / "fresh", "--resume"))
    assert rc == 0
    assert list((tmp_path / "fresh" / "checkpoints").glob("step-*.pt"))


def test_batch_size_larger_than_the_dataset(tiny_npz, tmp_path, capsys):
    rc = main(pretrain_args(tiny_npz, tmp_path / "r", "--batch-size", "64"))
    assert_user_error(rc, capsys, "train.batch_size", "64", "24 images")


@pytest.mark.parametrize("extra,needles", [
    (["--backbone", "resnet9000"], ["unknown backbone 'resnet9000'", "resnet18", "convnet"]),
    (["--method", "nope"], ["unknown method 'nope'", "simclr"]),
    (["--set", "augment.preset=nope"], ["unknown augmentation preset 'nope'", "simclr", "crop-flip"]),
    (["--set", "train.epochs=abc"], ["train.epochs", "abc"]),
    (["--set", "optim.name=adagrad"], ["adagrad", "sgd", "lars"]),
    (["--set", "temperature=0"], ["method.temperature must be > 0"]),
    (["--width", "0"], ["backbone.width must be > 0"]),
])
def test_user_errors_exit_2_with_one_line(tiny_npz, tmp_path, capsys, extra, needles):
    rc = main(pretrain_args(tiny_npz, tmp_path / "r", *extra))
    assert_user_error(rc, capsys, *needles)


def test_missing_data_is_a_user_error(tmp_path, capsys):
    rc = main(pretrain_args(tmp_path / "nothing.npz", tmp_path / "r"))
    assert_user_error(rc, capsys, "nothing.npz")
    rc = main(["eval", str(tmp_path / "no-run")])
    assert_user_error(rc, capsys, "no-run")
