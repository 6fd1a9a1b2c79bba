"""The loop's named parts on their own: TrainState round trip, the per-step schedule, the budget without a limit."""
from __future__ import annotations

import torch

from selfsup.engine.budget import Budget
from selfsup.engine.distributed import DistContext
from selfsup.engine.schedules import WarmupCosine, run_schedule, warmup_cosine
from selfsup.engine.state import TrainState

ONE = DistContext()


def _state(seed: int = 1) -> TrainState:
    return TrainState(torch.device("cpu"), torch.Generator().manual_seed(seed), total_steps=10)


def test_train_state_round_trip():
    a = _state()
    a.step = 4
    a.add_loss(torch.tensor(1.5))
    a.add_loss(torch.tensor(0.5))
    a.skipped = 2
    a.note_code(torch.tensor(2))  # a non-finite gradient at step 4 ...
    a.step = 5
    a.note_code(torch.tensor(1))  # ... is the first one, a later one does not replace it
    torch.rand(3, generator=a.aug_gen)
    sd = a.state_dict(ONE)
    assert {"step", "total_steps", "rng", "log"} <= set(sd)
    b = _state(seed=99)
    assert b.load_state_dict(sd, ONE, seed=0) is None
    assert (b.step, b.total_steps, b.loss_count, b.skipped) == (5, 10, 2, 2)
    assert b.window_loss(ONE) == 1.0 and b.first_bad_step(ONE) == 4 and int(b.first_kind) == 2
    assert torch.equal(torch.rand(3, generator=a.aug_gen), torch.rand(3, generator=b.aug_gen))
    b.reset_window()
    assert b.loss_count == 0 and b.window_loss(ONE) != b.window_loss(ONE)  # NaN: an empty window


def test_lr_at_is_the_list_and_holds_past_the_end():
    f = WarmupCosine(1.0, 20, 4, 0.1)
    assert [f(s) for s in range(20)] == warmup_cosine(1.0, 20, 4, 0.1)
    assert f(25) == f(19) and f(-1) == f(0)
    assert run_schedule(0.5, 10, 8, 0.0).warmup_steps == 2  # warm-up capped at a fifth of the run


def test_budget_without_a_limit_never_ends_or_resizes_the_run():
    b = Budget(None, start_step=0, dctx=ONE)
    assert not b.time_up() and all(b.resize(s, 100) is None for s in range(1, 40)) and b.elapsed() >= 0


def test_budget_sizes_the_run_early_and_again_after_the_measured_steps():
    b = Budget(1e6, start_step=3, dctx=ONE)  # a budget far beyond the run: the schedule keeps its length
    # steps 3 and 25 of this launch, then a quarter (too close to step 25: skipped) and half of the 97 left
    assert [s for s in range(4, 120) if b.resize(s, 100) is not None] == [6, 28, 51]
    b = Budget(1e6, start_step=0, dctx=ONE)
    assert [b.resize(s, 100) for s in (1, 2, 3)] == [None, None, 100] and not b.time_up()


def test_budget_resizes_again_once_the_steps_run_at_their_steady_speed(monkeypatch):
    """Steps 6-25 at 1 s, every later one at 0.5 s (kernels and caches warm): sized on steps 6-25 alone the
    600-s run would end its schedule at 312 s; the resizes at a quarter and half of it use the steady speed."""
    import selfsup.engine.budget as B

    now = [0.0]
    monkeypatch.setattr(B.time, "perf_counter", lambda: now[0])
    b = Budget(10.0, start_step=0, dctx=ONE)
    total, sized, step = 100_000, [], 0
    while step < total:
        step += 1
        now[0] += 1.0 if step <= 25 else 0.5
        if (new := b.resize(step, total)) is not None:
            total = new
            sized.append((step, total))
    assert [s for s, _ in sized[:2]] == [3, 25] and sized[1][1] == 600  # 575 more steps at 1 s
    assert len(sized) == 4 and sized[2][0] == int(0.25 * sized[1][1]) and sized[3][0] == int(0.5 * sized[1][1])
    assert total == 1175 and abs(now[0] - 600) <= 1.0  # the schedule ends with the budget
    assert b.resize(step + 1, total) is None and len(b.marks) == 6  # only the steps a sizing reads were timed


def test_a_short_budget_at_a_slow_speed_gets_a_schedule_it_finishes(monkeypatch):
    """4 minutes at 25.6 s a step (10 images/s, batch 256): sized after 3 steps to the ~10 steps that fit, with a
    warm-up that ends well inside them, and a warning that this is too short to learn anything."""
    import selfsup.engine.budget as B

    now = [0.0]
    monkeypatch.setattr(B.time, "perf_counter", lambda: now[0])
    b = Budget(4.0, start_step=0, dctx=ONE)
    total, sized = 400, []  # the configured length (10 epochs of 40 steps)
    for step in range(1, 12):
        now[0] += 25.6
        if (new := b.resize(step, total)) is not None:
            total = new
            sized.append(step)
    assert sized[0] == 3 and 8 <= total <= 10  # not 25 steps: the budget ends after ~10
    sched = run_schedule(0.3, total, warmup_steps=40, min_lr_ratio=0.0)  # 1 epoch of warm-up asked for
    assert sched.warmup_steps <= total // 5 and sched(total - 1) < sched(sched.warmup_steps)  # warm-up, then decay
    line, warning = B.estimate_message(4.0, total, 40, b.rate * 256, sched.warmup_steps)
    assert f"~{total} steps" in line and "fit the budget" in line and "10 images/s" in line
    assert warning is not None and "too short" in warning and "--time-limit-min" in warning
    assert B.estimate_message(60.0, 500, 40, 10.0, 40)[1] is None
