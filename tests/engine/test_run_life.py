"""The life of a run directory: one writer at a time, resume only what is the same run, durable writes, a full
disk said in one line, skipped non-finite steps that leave no trace, and schedules that cost O(1) per run."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, tiny_run_config

from selfsup.cli.main import main
from selfsup.config import build_run_config
from selfsup.engine import checkpoint as ckmod
from selfsup.engine.checkpoint import load_checkpoint, save_checkpoint
from selfsup.engine.lock import RunLock
from selfsup.engine.resume import SAFE_ON_RESUME
from selfsup.engine.rundir import RunDirError, list_checkpoints, prune_checkpoints, write_config, write_json
from selfsup.engine.trainer import TrainingError, pretrain
from selfsup.errors import ConfigError
from selfsup.methods.base import ViewBatch
from selfsup.registry import METHODS

ROOT = Path(__file__).resolve().parents[2]


def cfg(method: str = "simclr", method_opts: dict | None = None, **train):
    return tiny_run_config(method, method_opts, test_sizes=False, data="blobs", optim={"name": "sgd", "lr": 0.05},
                           **{"checkpoint_every": 1, **train})


def data():
    return make_blobs(n=32, size=16)  # 4 steps per epoch at batch 8


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory (the lock file aside: it holds the pid of the last process that ran)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_error_line(rc: int, capsys, *needles: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("selfsup: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------------- run lock
@pytest.fixture
def npz(tmp_path) -> Path:
    g = np.random.default_rng(0)
    p = tmp_path / "tiny.npz"
    np.savez(p, x_train=g.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8), y_train=np.arange(16) % 2,
             x_test=g.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), y_test=np.arange(8) % 2)
    return p


def cli_args(data_path: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--method", "simclr", "--data", str(data_path), "--backbone", "convnet", "--width", "0.25",
            "--max-steps", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out), "--quiet", *extra]


HOLDER = ("import sys; from selfsup.engine.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
          "print('locked', flush=True); sys.stdin.read()")


@pytest.fixture
def holder():
    """Another process holding a run directory's lock (engine/lock.py) until it is killed."""
    procs = []

    def start(run: Path) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=env, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=60)


def test_second_writer_is_refused_naming_the_holders_pid(npz, tmp_path, holder, capsys):
    run = tmp_path / "run"
    assert main(cli_args(npz, run)) == 0
    before = snapshot(run)
    capsys.readouterr()
    proc = holder(run)
    for extra in ((), ("--resume",), ("--overwrite",)):  # a second run, a second resume, and deleting a live run
        rc = main(cli_args(npz, run, *extra))
        one_error_line(rc, capsys, str(run), f"pid {proc.pid}", "in use by another selfsup process")
    assert snapshot(run) == before  # nothing read-modified, nothing deleted

    proc.send_signal(signal.SIGKILL)  # the kernel releases a dead process's flock: the pid left in .lock is stale
    proc.wait(timeout=60)
    assert (run / ".lock").read_text().strip() == str(proc.pid)
    assert main(cli_args(npz, run, "--resume", "--max-steps", "3")) == 0
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 3]
    assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cls = METHODS.get("simclr")
    original, seen = cls.forward, []

    def forward(self, batch, ctx=None):
        if ctx is not None and ctx.step in (0, 3):
            try:
                RunLock(run).acquire()  # another open file description: flock refuses it as it would another process
                seen.append("acquired")
            except RunDirError as e:
                seen.append(str(e))
        return original(self, batch, ctx)

    monkeypatch.setattr(cls, "forward", forward)
    pretrain(cfg(max_steps=4), run, data=data(), quiet=True)
    assert len(seen) == 2 and all(f"pid {os.getpid()}" in s for s in seen), seen
    with RunLock(run) as lock:  # released at the end
        assert lock.held
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").write_text("999999999\n")  # a stale lock file from a crashed run never blocks
    assert pretrain(cfg(max_steps=1), fresh, data=data(), quiet=True).steps == 1


# ------------------------------------------------------------------------------------------- config on resume
@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("half") / "run"
    pretrain(cfg(max_steps=2), run, data=data(), quiet=True)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


REFUSED = {  # key → a config with it changed (each also a source of raw tracebacks or silent corruption before)
    "method.name": lambda: cfg("byol", max_steps=4),
    "method.temperature": lambda: cfg("simclr", {"temperature": 0.3}, max_steps=4),
    "backbone.width": lambda: build_run_config({**cfg(max_steps=4).to_dict(), "backbone": {"name": "convnet",
                                                                                          "width": 0.5}}),
    "optim.lr": lambda: build_run_config({**cfg(max_steps=4).to_dict(), "optim": {"name": "sgd", "lr": 0.1}}),
    "optim.name": lambda: build_run_config({**cfg(max_steps=4).to_dict(), "optim": {"name": "adamw", "lr": 0.05}}),
    "train.batch_size": lambda: cfg(max_steps=4, batch_size=4),
    "train.seed": lambda: cfg(max_steps=4, seed=1),
    "train.epochs": lambda: cfg(max_steps=4, epochs=3),
    "train.precision": lambda: cfg(max_steps=4, precision="bf16"),
    "augment.crop_scale_min": lambda: build_run_config({**cfg(max_steps=4).to_dict(),
                                                        "augment": {"crop_scale_min": 0.5}}),
    "data.path": lambda: build_run_config({**cfg(max_steps=4).to_dict(), "data": {"path": "other"}}),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_resume_refuses_a_changed_config_naming_the_keys(key, half_run, tmp_path):
    run = copy_run(half_run, tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"--resume: the config differs .*" + key.replace(".", r"\.")) as e:
        pretrain(REFUSED[key](), run, data=data(), quiet=True, resume=True)
    assert "\n" not in str(e.value)
    assert snapshot(run) == before


def test_resume_on_other_data_at_the_same_path_is_refused(half_run, tmp_path):
    run = copy_run(half_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="data.path holds other data .*num_train 32 -> 48"):
        pretrain(cfg(max_steps=4), run, data=make_blobs(n=48, size=16), quiet=True, resume=True)


def test_resume_accepts_safe_changes_and_records_them_beside_the_config(half_run, tmp_path):
    run = copy_run(half_run, tmp_path / "run")
    config_before = (run / "config.yaml").read_bytes()
    new = cfg(max_steps=4, log_every=2, checkpoint_every=3, nan_policy="skip", time_limit_min=60.0)
    assert {"train.max_steps", "train.log_every", "train.checkpoint_every", "train.nan_policy",
            "train.time_limit_min"} <= set(SAFE_ON_RESUME)
    res = pretrain(new, run, data=data(), quiet=True, resume=True)
    assert res.steps == 4
    assert (run / "config.yaml").read_bytes() == config_before  # how the run was launched: not rewritten
    recs = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["step"] == 2 and recs[0]["checkpoint"] == "step-00000002.pt"
    assert recs[0]["changed"] == {"train.checkpoint_every": [1, 3], "train.log_every": [1, 2],
                                  "train.max_steps": [2, 4], "train.nan_policy": ["stop", "skip"],
                                  "train.time_limit_min": [None, 60.0]}
    assert "time" in recs[0]


def test_resuming_a_finished_run_changes_nothing(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(cli_args(npz, run, "--epochs", "1")) == 0  # 2 steps: the whole schedule
    capsys.readouterr()
    before = snapshot(run)
    assert main([a for a in cli_args(npz, run, "--epochs", "1", "--resume") if a != "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "already finished at step 2/2; nothing to do" in cap.err
    result = [ln for ln in cap.out.splitlines() if not ln.startswith("selfsup: ")]  # after the phase lines
    assert result[0].startswith("finished: 2 steps") and len(result) == 1 and "nan" not in cap.out
    assert snapshot(run) == before
    strict_loads((run / "run.json").read_text())

    half = tmp_path / "half"  # stopped by max_steps and resumed with the same max_steps: nothing to do either
    assert main(cli_args(npz, half, "--epochs", "2")) == 0
    before = snapshot(half)
    assert main([a for a in cli_args(npz, half, "--epochs", "2", "--resume") if a != "--quiet"]) == 0
    assert "already at train.max_steps=2" in capsys.readouterr().err
    assert snapshot(half) == before


def test_run_json_is_strict_json_when_the_last_loss_is_not_finite(tmp_path, monkeypatch):
    """The last logged window holds only a skipped step: its loss is undefined and must be written as null."""
    inject_non_finite(monkeypatch, "simclr", steps={3}, how="loss")
    run = tmp_path / "run"
    res = pretrain(cfg(max_steps=4, nan_policy="skip"), run, data=data(), quiet=True)
    assert math.isnan(res.final_loss)
    meta = strict_loads((run / "run.json").read_text())
    assert meta["final_loss"] is None and meta["steps"] == 4
    write_json(tmp_path / "x.json", {"a": float("inf"), "b": [float("nan"), 1.0], "c": {"d": -float("inf")}})
    assert strict_loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.0], "c": {"d": None}}


# ------------------------------------------------------------------------------------- full disk, durability
def full_disk_after(limit: int, only_after_step: int):
    """A torch.save whose writes fail with ENOSPC after ``limit`` bytes, for checkpoints past a step."""
    real_save = torch.save

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    def save(obj, f, *a, **k):
        if obj.get("step", 0) > only_after_step:
            return real_save(obj, Full(f), *a, **k)
        return real_save(obj, f, *a, **k)

    return save


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_previous_ones(npz, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setattr(ckmod.torch, "save", full_disk_after(1000, only_after_step=2))
    run = tmp_path / "run"
    line = one_error_line(main(cli_args(npz, run, "--max-steps", "4", "--checkpoint-every", "1")), capsys,
                          "cannot write checkpoint", "step-00000003.pt", "no space left on device",
                          "the previous checkpoints are intact (newest: step-00000002.pt)", "--resume")
    assert "Traceback" not in line
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002.pt", "step-00000001.pt"]
    assert all(load_checkpoint(p)["step"] in (1, 2) for p in list_checkpoints(run))
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the cut temp file is removed
    monkeypatch.undo()
    assert main(cli_args(npz, run, "--max-steps", "4", "--checkpoint-every", "1", "--resume")) == 0


def test_a_full_disk_for_config_or_run_json_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text('{"old": 1}\n')
    real_open = open

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and str(path).endswith(".tmp"):
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(RunDirError, match="cannot write .*run.json: No space left on device; the previous run.json "
                                          "is intact"):
        write_json(tmp_path / "run.json", {"new": 2})
    monkeypatch.undo()
    assert (tmp_path / "run.json").read_text() == '{"old": 1}\n'
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync as (path, is_directory)."""
    calls: list[tuple[str, bool]] = []
    real = os.fsync

    def record(fd):
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", record)
    return calls


def test_atomic_writes_fsync_the_file_and_its_directory(tmp_path, fsyncs):
    d = tmp_path.resolve()
    write_json(d / "run.json", {"a": 1})
    write_config(d, {"train": {"seed": 0}})
    (d / "checkpoints").mkdir()
    save_checkpoint({"w": torch.ones(2)}, d / "checkpoints" / "step-00000001.pt")
    files = [Path(p).name for p, is_dir in fsyncs if not is_dir]
    dirs = [p for p, is_dir in fsyncs if is_dir]
    assert any(n.startswith(".run.json") for n in files) and any(n.startswith(".config.yaml") for n in files)
    assert any(n.startswith(".step-00000001.pt") for n in files)
    assert dirs.count(str(d)) == 2 and dirs.count(str(d / "checkpoints")) == 1


def test_a_run_fsyncs_its_log_before_each_checkpoint(tmp_path, fsyncs):
    run = (tmp_path / "run").resolve()
    pretrain(cfg(max_steps=2), run, data=data(), quiet=True)
    names = [Path(p).name for p, is_dir in fsyncs if not is_dir]
    assert names.count("metrics.jsonl") >= 2  # checkpoints at steps 1 and 2
    assert str(run / "checkpoints") in [p for p, is_dir in fsyncs if is_dir]


# ------------------------------------------------------------------------------------------ nan_policy=skip
def inject_non_finite(monkeypatch, method: str, steps: set[int], how: str = "input") -> None:
    """``how="input"``: the step's views are inf (BatchNorm statistics would become NaN); ``"loss"``: a NaN loss."""
    cls = METHODS.get(method)
    original = cls.forward

    def forward(self, batch, ctx=None):
        bad = ctx is not None and ctx.step in steps
        if bad and how == "input":
            batch = ViewBatch([v * float("inf") for v in batch.views], batch.index)
        out = original(self, batch, ctx)
        if bad and how == "loss":
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(cls, "forward", forward)


def buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_buffers()}


SKIP_CASES = {  # methods with BatchNorm in the backbone, plus an EMA teacher (BYOL) or a queue (MoCo v2)
    "simclr": {},
    "byol": {},
    "moco-v2": {"queue_size": 32, "bn_splits": 2},
}


@pytest.mark.parametrize("name", sorted(SKIP_CASES))
def test_a_skipped_step_leaves_every_buffer_as_it_was(name, tmp_path, monkeypatch):
    bad = 3
    inject_non_finite(monkeypatch, name, steps={bad})
    cls = METHODS.get(name)
    patched, seen = cls.forward, {}

    def forward(self, batch, ctx=None):
        if ctx is not None and ctx.step in (bad, bad + 1):
            seen[ctx.step] = buffers(self)  # before the skipped step's forward, and after that step
        return patched(self, batch, ctx)

    monkeypatch.setattr(cls, "forward", forward)
    run = tmp_path / "run"
    res = pretrain(cfg(name, SKIP_CASES[name], nan_policy="skip"), run, data=data(), quiet=True)
    assert res.steps == 8 and res.stopped == "done"
    before, after = seen[bad], seen[bad + 1]
    assert any("running_mean" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), f"buffer {k} changed across a skipped step"
    for p in list_checkpoints(run):
        state = load_checkpoint(p)["method"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), p.name
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["skipped_steps"] == 1


def test_a_skipped_step_stages_nothing_into_queues_priors_or_banks():
    """What a skipped step's forward staged (queue rows, prior counts, bank rows, centre sums) is discarded."""
    from selfsup.components.base import StepContext, discard_staged, update_parts
    from selfsup.components.center import Center
    from selfsup.components.class_prior import ClassPrior
    from selfsup.components.memory_bank import MemoryBank
    from selfsup.components.queue import FeatureQueue

    parts = torch.nn.ModuleDict({"queue": FeatureQueue(8, 4), "prior": ClassPrior(3), "bank": MemoryBank(6, 4),
                                 "center": Center(4)})
    before = {k: v.clone() for k, v in parts.state_dict().items()}
    ctx = StepContext(step=0, total_steps=2)
    parts["queue"].stage(torch.randn(2, 4))
    parts["prior"].observe(torch.softmax(torch.randn(2, 3), dim=1))
    parts["bank"].stage(torch.tensor([0, 1]), torch.randn(2, 4), ctx)
    parts["center"].observe(torch.randn(2, 4), ctx)
    discard_staged(parts)  # the loop's skip branch
    update_parts(parts, StepContext(step=1, total_steps=2))  # the next committed step stages nothing itself
    after = parts.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]


def test_pruning_never_deletes_the_newest_finite_checkpoint(tmp_path):
    ck = tmp_path / "checkpoints"
    for step, value in ((1, 1.0), (2, 2.0), (3, float("nan")), (4, float("inf"))):
        save_checkpoint({"method": {"w": torch.full((2,), value)}, "step": step}, ck / f"step-{step:08d}.pt")
    prune_checkpoints(tmp_path, keep=2, newest_finite=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004.pt", "step-00000003.pt",
                                                            "step-00000002.pt"]
    save_checkpoint({"method": {"w": torch.ones(2)}, "step": 5}, ck / "step-00000005.pt")
    prune_checkpoints(tmp_path, keep=2, newest_finite=True)  # a finite newest one: the usual two are kept
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005.pt", "step-00000004.pt"]


def test_a_run_whose_every_step_was_skipped_is_an_error(tmp_path, monkeypatch):
    inject_non_finite(monkeypatch, "simclr", steps=set(range(100)), how="loss")
    with pytest.raises(TrainingError, match="every step was non-finite \\(4 of 4 skipped"):
        pretrain(cfg(max_steps=4, nan_policy="skip"), tmp_path / "run", data=data(), quiet=True)


# ------------------------------------------------------------------------------------------------- schedules
def old_warmup_cosine(base, total_steps, warmup_steps, final=0.0):
    """The list the trainer used to build (one float per step of the run), kept here as the reference."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)
    out = []
    for s in range(total_steps):
        if s < warmup_steps:
            out.append(base * (s + 1) / warmup_steps)
        else:
            t = (s - warmup_steps) / max(1, total_steps - warmup_steps)
            out.append(final + (base - final) * 0.5 * (1 + math.cos(math.pi * t)))
    return out


@pytest.mark.parametrize("base,total,warmup,final", [(1.0, 20, 4, 0.1), (0.3, 1, 10, 0.0), (2.0, 5, 0, 0.0),
                                                     (0.05, 97, 13, 0.005), (1e-3, 0, 0, 0.0), (0.1, 8, -3, 0.0)])
def test_per_step_lr_equals_the_old_list(base, total, warmup, final):
    from selfsup.engine.schedules import WarmupCosine, lr_at, warmup_cosine

    ref = old_warmup_cosine(base, total, warmup, final)
    sched = WarmupCosine(base, total, warmup, final)
    assert [sched(s) for s in range(len(ref))] == ref  # bit for bit
    assert [lr_at(s, base, total, warmup, final) for s in range(len(ref))] == ref
    assert warmup_cosine(base, total, warmup, final) == ref
    assert sched(len(ref) + 5) == ref[-1]  # past the end: the last value


def test_ten_million_epochs_cost_nothing_before_the_first_step(tmp_path):
    """``--epochs 10**7`` used to build a Python list of 4·10⁷ learning rates (~1.3 GB) before step 1."""
    tracemalloc.start()
    try:
        res = pretrain(cfg(epochs=10**7, max_steps=2, checkpoint_every=None), tmp_path / "run", data=data(),
                       quiet=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.steps == 2 and res.stopped == "max_steps"
    assert peak < 64 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["total_steps"] == 4 * 10**7


def test_a_key_older_runs_lack_is_no_change_at_its_default():
    from selfsup.engine.resume import check_resume_config

    new = cfg(max_steps=4).to_dict()
    old = json.loads(json.dumps(new))
    del old["train"]["dist_timeout_min"], old["method"]["temperature"]  # as written by a version without them
    assert check_resume_config(old, new, Path("step-00000002.pt")) == {}
    new["method"]["temperature"] = 0.3
    with pytest.raises(ConfigError, match=r"method\.temperature None -> 0\.3"):
        check_resume_config(old, new, Path("step-00000002.pt"))
