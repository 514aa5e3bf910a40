"""Every ```python block in the README and docs/ runs as written (in a fresh namespace)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(f, i, m.group(1)) for f in FILES
          for i, m in enumerate(re.finditer(r"```python\n(.*?)```", f.read_text(), re.S))]


@pytest.mark.parametrize("path, index, code", BLOCKS, ids=[f"{p.name}#{i}" for p, i, _ in BLOCKS])
def test_python_block_runs(path, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}[{index}]", "exec"), {"__name__": "__docs__"})


def test_there_are_blocks():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("module", ["npadam", "npadam.layout", "npadam.optimizer", "npadam.functional",
                                    "npadam.checkpoint", "npadam.config",
                                    "npadam.torch", "npadam.torch._scheduler"])
def test_docstring_examples(module):
    import doctest
    import importlib

    if module.startswith("npadam.torch"):
        pytest.importorskip("torch")
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and (result.attempted > 0 or module == "npadam.torch._scheduler")
