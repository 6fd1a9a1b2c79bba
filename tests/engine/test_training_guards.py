"""Non-finite loss or gradients (stop or skip, naming the step) and unusable output directories (caught early)."""
from __future__ import annotations

import errno
import json
import os
import stat
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_run_config

from selfsup.cli.main import main
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.rundir import RunDirError, list_checkpoints
from selfsup.engine.trainer import TrainingError, pretrain
from selfsup.methods.simclr import SimCLR

BAD_STEP = 3


def config(**train):
    return tiny_run_config("simclr", test_sizes=False, optim={}, **{"log_every": 10, "checkpoint_every": 1, **train})


@pytest.fixture
def inject(monkeypatch):
    """Make SimCLR's step BAD_STEP produce a NaN loss, or a finite loss whose gradients are NaN."""
    def setup(kind: str) -> None:
        original = SimCLR.forward

        def forward(self, batch, ctx=None):
            out = original(self, batch, ctx)
            if ctx is not None and ctx.step == BAD_STEP:
                if kind == "loss":
                    out.loss = out.loss * float("nan")
                else:  # sqrt at 0: the value is 0, the gradient 0 * inf = NaN
                    p = next(self.projector.parameters())
                    out.loss = out.loss + torch.sqrt((p * 0).sum())
                    assert torch.isfinite(out.loss)
            return out

        monkeypatch.setattr(SimCLR, "forward", forward)
    return setup


def finite_state(ck: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point())


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, inject, kind):
    inject(kind)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=f"non-finite {kind} at step {BAD_STEP} "):
        pretrain(config(nan_policy="stop"), run, data=make_blobs(n=32, size=16), quiet=True)
    ckpts = list_checkpoints(run)
    assert ckpts and int(load_checkpoint(ckpts[0])["step"]) == BAD_STEP  # the bad update is never checkpointed
    assert all(finite_state(load_checkpoint(p)) for p in ckpts)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_skip_continues_with_finite_weights_and_logs_the_skip(tmp_path, inject, kind, capsys):
    inject(kind)
    run = tmp_path / "run"
    res = pretrain(config(nan_policy="skip", log_every=1), run, data=make_blobs(n=32, size=16), quiet=True)
    assert res.steps == 8 and res.stopped == "done"
    assert f"step {BAD_STEP}: non-finite {kind}, update skipped" in capsys.readouterr().err
    assert finite_state(load_checkpoint(list_checkpoints(run)[0]))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the skipped step's loss is never averaged in: its own window (log_every=1) has no loss, the others do
    assert [r["step"] for r in recs if r["loss"] is None] == [BAD_STEP + 1]
    assert [r.get("skipped_steps", 0) for r in recs] == [0] * BAD_STEP + [1] * (8 - BAD_STEP)


def test_clean_run_has_no_skips(tmp_path):
    run = tmp_path / "run"
    pretrain(config(nan_policy="skip", log_every=1), run, data=make_blobs(n=32, size=16), quiet=True)
    assert all("skipped_steps" not in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


def test_read_only_directory_is_refused_before_training(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not make a directory read-only")
        with pytest.raises(RunDirError, match="cannot write to run directory"):
            pretrain(config(), out / "run", data=make_blobs(n=32, size=16), quiet=True)
    finally:
        out.chmod(stat.S_IRWXU)


def test_output_under_a_file_is_refused(tmp_path, capsys):
    """Works as root too: a run directory whose parent is a regular file can never be created."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    with pytest.raises(RunDirError, match="cannot write to run directory"):
        pretrain(config(), out, data=make_blobs(n=32, size=16), quiet=True)
    assert main(["pretrain", "--data", "mnist5k", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("selfsup: error: cannot write to run directory")


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    """No space for the probe write (ENOSPC), or less free space than the checkpoints need."""
    real_write = Path.write_bytes

    def full(self, data):
        if self.name == ".write-test":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full)
        with pytest.raises(RunDirError, match="No space left on device"):
            pretrain(config(), tmp_path / "a", data=make_blobs(n=32, size=16), quiet=True)

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr("selfsup.engine.resume.shutil.disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(RunDirError, match="not enough free space .* checkpoints need about"):
        pretrain(config(), tmp_path / "b", data=make_blobs(n=32, size=16), quiet=True)
    assert not (tmp_path / "b" / "metrics.jsonl").exists() and not list_checkpoints(tmp_path / "b")
