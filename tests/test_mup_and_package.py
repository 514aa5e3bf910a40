"""muP multipliers and the package's import contract."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from npadam import schedules as S
from npadam.schedules import mup


def test_mup_groups_adam_rules():
    base = {"embed": (256, 64), "w_hidden": (64, 64), "bias": (64,), "readout": (1000, 64), "norm": (64,)}
    big = {"embed": (256, 512), "w_hidden": (512, 512), "bias": (512,), "readout": (1000, 512), "norm": (512,)}
    # torch's Embedding stores (vocab, d): by shape it looks like a readout until overridden
    by_shape = {g["mup"]: g for g in mup.mup_param_groups(big, base, lr=1e-2)}
    assert sorted(by_shape["output"]["params"]) == ["embed", "readout"]
    groups = {g["mup"]: g for g in mup.mup_param_groups(big, base, lr=1e-2, weight_decay=0.1,
                                                         overrides={"embed": "vector"})}
    assert groups["hidden"]["params"] == ["w_hidden"] and groups["hidden"]["lr"] == 1e-2 / 8
    assert groups["vector"]["params"] == ["embed", "bias", "norm"] and groups["vector"]["lr"] == 1e-2
    assert groups["output"]["params"] == ["readout"] and groups["output"]["lr"] == 1e-2 / 8
    assert all(g["weight_decay"] == 0.1 for g in groups.values())


def test_mup_readout_multiplier_convention_and_schedules():
    lr = S.warmup_cosine(peak=1e-2, warmup_steps=10, total_steps=100)
    groups = mup.mup_param_groups({"w": (128, 128), "out": (10, 128)}, {"w": (32, 32), "out": (10, 32)},
                                  lr=lr, readout="multiplier")
    by = {g["mup"]: g for g in groups}
    assert by["output"]["lr"](50) == lr(50)
    assert by["hidden"]["lr"](50) == 0.25 * lr(50)
    assert mup.lr_multiplier("output", 4.0, readout="lr") == 0.25


def test_mup_errors():
    with pytest.raises(ValueError, match="only one of"):
        mup.mup_param_groups({"a": (2, 2)}, {"b": (2, 2)}, lr=1.0)
    with pytest.raises(ValueError, match="not in shapes"):
        mup.mup_param_groups({"a": (2, 2)}, {"a": (2, 2)}, lr=1.0, overrides={"b": "vector"})
    with pytest.raises(ValueError, match="different ranks"):
        mup.classify((4, 4), (4,))
    with pytest.raises(ValueError, match="kind must be one of"):
        mup.lr_multiplier("matrix", 2.0)
    assert mup.width_multiplier(256, 1024) == 4.0


def test_import_is_light():
    code = ("import sys, npadam; heavy = [m for m in ('numba', 'cupy', 'torch', 'matplotlib', 'jax', 'npadam.cli')"
            " if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_schedule_set_round_trip():
    s = S.from_config("torch", {"lr": 1e-3, "scheduler": "OneCycleLR", "max_lr": 1e-2, "total_steps": 50})
    again = S.ScheduleSet.from_dict(s.to_dict())
    k = np.arange(51)
    assert [n for n, _ in again.items()] == ["lr", "beta1"]
    assert np.array_equal(again.lr(k), s.lr(k)) and np.array_equal(again.beta1(k), s.beta1(k))


def test_every_package_folder_is_listed_in_pyproject():
    """setuptools lists the packages explicitly (reference/ installs as npadam.reference)."""
    import pathlib

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "npadam").rglob("__init__.py")}
    found.add("npadam.reference")
    assert set(cfg["packages"]) == found
    assert cfg["package-dir"] == {"npadam.reference": "reference"} and (root / "reference" / "__init__.py").exists()
