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


def test_budget_sizes_the_run_once_after_the_measured_steps():
    b = Budget(1e6, start_step=3, dctx=ONE)  # a budget far beyond the run: the schedule keeps its length
    assert all(b.resize(s, 100) is None for s in range(4, 28))  # steps 1..24 of this launch
    assert b.resize(28, 100) == 100 and b.resize(29, 100) is None and not b.time_up()
