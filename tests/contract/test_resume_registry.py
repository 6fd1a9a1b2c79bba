"""Exact resume, generated from the method registry: every method's state survives a checkpoint/resume cycle.

For each registered method (honouring its ``test_overrides`` / ``test_backbone``), 4 engine steps straight must
equal 2 steps, a checkpoint, a fresh process-like rebuild and 2 more steps that cross an epoch boundary: the same
final ``state_dict`` (weights and every buffer: queues, memory banks, EMA teachers, centres, prototypes),
optimizer state, RNG state and the same logged losses. Methods that take multi-crop run again with local crops.
Also: the same seed and config give the same ``metrics.jsonl`` (timing fields aside).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_run_config

from selfsup.config import ConfigError
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.rundir import list_checkpoints
from selfsup.engine.trainer import pretrain
from selfsup.registry import METHODS

TIMING = ("images_per_s", "time_s")


MULTICROP = [n for n in METHODS.names() if METHODS.get(n).supports_multicrop]


def tiny_config(name: str, local_crops: int = 0, **train):
    return tiny_run_config(name, augment={"local_crops": local_crops} if local_crops else None,
                           **{"epochs": 1, "seed": 5, **train})


def curve(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def final(run: Path) -> dict:
    return load_checkpoint(list_checkpoints(run)[0])


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["method"].keys() == b["method"].keys()
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), f"state '{k}' differs after resume"
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k, v in oa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob[i][k])), f"optimizer state {i}.{k} differs"
    assert torch.equal(a["rng"]["aug"], b["rng"]["aug"]) and torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def check_resume_is_exact(name: str, tmp_path: Path, local_crops: int = 0) -> None:
    data = make_blobs(n=24, size=16)  # 3 steps per epoch at batch 8: the resumed half crosses into epoch 2
    straight = tmp_path / "straight"
    pretrain(tiny_config(name, local_crops, epochs=2, max_steps=4), straight, data=data, quiet=True)
    split = tmp_path / "split"
    first = pretrain(tiny_config(name, local_crops, epochs=2, max_steps=2), split, data=data, quiet=True)
    assert first.steps == 2 and first.stopped == "max_steps"
    second = pretrain(tiny_config(name, local_crops, epochs=2, max_steps=4), split, data=data, quiet=True,
                      resume="auto")
    assert second.steps == 4
    assert_same_state(final(straight), final(split))
    assert curve(split) == curve(straight)
    assert [r["step"] for r in curve(split)] == [1, 2, 3, 4]


@pytest.mark.parametrize("name", METHODS.names())
def test_resume_is_exact(name, tmp_path):
    check_resume_is_exact(name, tmp_path)


@pytest.mark.parametrize("name", MULTICROP)
def test_resume_is_exact_with_local_crops(name, tmp_path):
    check_resume_is_exact(name, tmp_path, local_crops=2)


def test_memory_bank_resume_on_other_data_is_a_config_error(tmp_path):
    """A memory bank is addressed by dataset index: resuming on a dataset of another size is refused."""
    pretrain(tiny_config("npid", max_steps=2), tmp_path / "run", data=make_blobs(n=32, size=16), quiet=True)
    with pytest.raises(ConfigError, match="data.path"):
        pretrain(tiny_config("npid"), tmp_path / "run", data=make_blobs(n=48, size=16), quiet=True, resume=True)


def test_same_seed_same_metrics(tmp_path):
    data = make_blobs(n=32, size=16)
    for run in ("a", "b"):
        pretrain(tiny_config("simclr", epochs=2, log_every=3), tmp_path / run, data=data, quiet=True)
    a, b = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert len(a) == 3 and a == b  # steps 3, 6 and the last (8)
    assert_same_state(final(tmp_path / "a"), final(tmp_path / "b"))


def test_resume_mid_log_window_logs_the_same_average(tmp_path):
    """A checkpoint inside a logging window carries the window's partial sum: the averaged loss is unchanged."""
    data = make_blobs(n=32, size=16)
    pretrain(tiny_config("simclr", epochs=2, log_every=3), tmp_path / "a", data=data, quiet=True)
    pretrain(tiny_config("simclr", epochs=2, log_every=3, max_steps=4), tmp_path / "b", data=data, quiet=True)
    pretrain(tiny_config("simclr", epochs=2, log_every=3), tmp_path / "b", data=data, quiet=True, resume=True)
    b = curve(tmp_path / "b")
    assert [r["step"] for r in b] == [3, 4, 6, 8]  # 4: the max_steps stop logs its partial window
    assert [r for r in b if r["step"] != 4] == curve(tmp_path / "a")


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    data = make_blobs(n=32, size=16)
    run = tmp_path / "run"
    res = pretrain(tiny_config("simclr"), run, data=data, quiet=True, resume="auto")
    assert res.steps == 4 and [r["step"] for r in curve(run)] == [1, 2, 3, 4]


def test_resume_skips_a_damaged_checkpoint_with_a_warning(tmp_path):
    data = make_blobs(n=32, size=16)
    run = tmp_path / "run"
    pretrain(tiny_config("simclr", max_steps=3, checkpoint_every=1), run, data=data, quiet=True)
    newest = list_checkpoints(run)[0]
    assert newest.name == "step-00000003.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # cut, as by a crash on a filesystem without atomic rename
    with pytest.warns(UserWarning, match="skipping damaged checkpoint step-00000003.pt"):
        res = pretrain(tiny_config("simclr"), run, data=data, quiet=True, resume="auto")
    assert res.steps == 4
    assert [r["step"] for r in curve(run)] == [1, 2, 3, 4]


def test_resume_rejects_other_values(tmp_path):
    from selfsup.engine.rundir import RunDirError

    with pytest.raises(RunDirError, match="--resume takes no value or 'auto'"):
        pretrain(tiny_config("simclr"), tmp_path / "run", data=make_blobs(n=32, size=16), resume="newest")
