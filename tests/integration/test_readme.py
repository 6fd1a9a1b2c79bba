"""The README's Python blocks run verbatim (every name they use is defined in them: no names injected), and its
demo table says which machine printed it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert BLOCKS, "README has no python example"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    scope: dict = {"__name__": "__readme__"}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), scope)
    if i == 0:  # the training-loop example
        assert torch.isfinite(scope["out"].loss)


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick


def test_readme_demo_table_names_the_machine_it_came_from():
    quick = README.read_text().split("## Quick start", 1)[1].split("## ", 1)[0]
    before_table = quick.split("protocol   metric", 1)[0].rsplit("make demo", 1)[1]
    assert re.search(r"\d+-core .*CPU", before_table) and re.search(r"20\d\d-\d\d-\d\d", before_table)
