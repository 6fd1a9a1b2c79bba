"""engine/feed.py: the GPU data cache and the prefetch of the next batch (their CUDA-free logic; CI has no GPU)."""
from __future__ import annotations

import torch

from selfsup.data.base import InMemorySplit
from selfsup.engine import feed

CUDA = torch.device("cuda")  # a device object only: nothing here allocates on it


def _batches(n: int):
    for i in range(n):
        yield torch.full((2, 1, 4, 4), i, dtype=torch.uint8), torch.tensor([2 * i, 2 * i + 1]), None


def test_prefetch_is_a_pass_through_on_the_cpu():
    got = list(feed.prefetch(_batches(3), torch.device("cpu")))
    assert [int(x[0].max()) for x in got] == [0, 1, 2]


def test_prefetch_moves_the_next_batch_before_yielding_the_current(monkeypatch):
    events: list[str] = []

    def move(batch, device):
        events.append(f"move {int(batch[0].max())}")
        return batch

    monkeypatch.setattr(feed, "_move", move)
    for x, _, _ in feed.prefetch(_batches(3), CUDA):
        events.append(f"step {int(x.max())}")
    assert events == ["move 0", "move 1", "step 0", "move 2", "step 1", "step 2"]
    assert list(feed.prefetch(iter(()), CUDA)) == []


def test_device_split_keeps_host_data_on_the_cpu_or_when_too_large(monkeypatch):
    split = InMemorySplit(torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
    assert feed.device_split(split, torch.device("cpu")) is split
    assert feed.device_split(split, CUDA, enabled=False) is split
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100, 1000))  # 480 bytes > 100 / 4
    assert feed.device_split(split, CUDA) is split
    streaming = object()  # not an in-memory split: never copied
    assert feed.device_split(streaming, CUDA) is streaming
