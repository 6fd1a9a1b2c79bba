"""The README's Python API example runs as written (with two tiny batches standing in for the user's data)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    scope = {"my_uint8_batches": [torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8) for _ in range(2)],
             "total_steps": 2}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert torch.isfinite(scope["out"].loss)


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
