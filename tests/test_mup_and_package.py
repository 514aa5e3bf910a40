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
    by_shape = {g["mup"]: g for g in mup.mup_param_groups(big, base, lr=1e-2, convention="tp5")}
    assert sorted(by_shape["output"]["params"]) == ["embed", "readout"]
    groups = {g["mup"]: g for g in mup.mup_param_groups(big, base, lr=1e-2, weight_decay=0.1,
                                                         overrides={"embed": "vector"}, convention="tp5")}
    assert groups["hidden"]["params"] == ["w_hidden"] and groups["hidden"]["lr"] == 1e-2 / 8
    assert groups["vector"]["params"] == ["embed", "bias", "norm"] and groups["vector"]["lr"] == 1e-2
    assert groups["output"]["params"] == ["readout"] and groups["output"]["lr"] == 1e-2 / 8
    assert all(g["weight_decay"] == 0.1 for g in groups.values())


def test_mup_readout_multiplier_convention_and_schedules():
    lr = S.warmup_cosine(peak=1e-2, warmup_steps=10, total_steps=100)
    groups = mup.mup_param_groups({"w": (128, 128), "out": (10, 128)}, {"w": (32, 32), "out": (10, 32)},
                                  lr=lr, readout="multiplier", convention="tp5")
    by = {g["mup"]: g for g in groups}
    assert by["output"]["lr"](50) == lr(50)
    assert by["hidden"]["lr"](50) == 0.25 * lr(50)
    assert mup.lr_multiplier("output", 4.0, readout="lr") == 0.25


def _models(width, base=8):
    import torch
    from mup import MuReadout

    class Net(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.embed = torch.nn.Embedding(50, d)
            self.norm = torch.nn.LayerNorm(d)
            self.fc1 = torch.nn.Linear(d, 2 * d)
            self.fc2 = torch.nn.Linear(2 * d, d, bias=False)
            self.conv = torch.nn.Conv1d(d, d, 3)
            self.readout = MuReadout(d, 10)

    torch.manual_seed(0)
    return Net(width), Net(base), Net(base * 2)


@pytest.mark.parametrize("width", [8, 24, 32, 96])
@pytest.mark.parametrize("cls", ["MuAdamW", "MuAdam"])
def test_mup_convention_matches_the_mup_package(width, cls):
    """Group by group against mup.MuAdam/MuAdamW on a model after set_base_shapes: each param's lr and
    weight decay equal the package's, bit for bit (hidden lr 0.01 -> 0.0025 and wd 0.1 -> 0.4 at m = 4)."""
    pytest.importorskip("torch")
    mup_pkg = pytest.importorskip("mup")
    model, base, delta = _models(width)
    mup_pkg.set_base_shapes(model, base, delta=delta)
    ref = getattr(mup_pkg, cls)(model.parameters(), lr=0.01, weight_decay=0.1)
    want = {id(p): (g["lr"], g["weight_decay"]) for g in ref.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    groups = mup.mup_param_groups({n: tuple(p.shape) for n, p in params.items()},
                                  {n: tuple(p.shape) for n, p in base.named_parameters()},
                                  lr=0.01, weight_decay=0.1)
    got = {id(params[n]): (g["lr"], g["weight_decay"]) for g in groups for n in g["params"]}
    assert got == want
    if width == 32:  # m = 4: hidden lr 0.01 -> 0.0025, weight decay 0.1 -> 0.4
        assert got[id(params["fc1.weight"])] == got[id(params["fc2.weight"])] == (0.0025, 0.4)
        assert got[id(params["embed.weight"])] == got[id(params["readout.weight"])] == (0.01, 0.1)


def test_mup_convention_errors_and_schedules():
    lr = S.warmup_cosine(peak=1e-2, warmup_steps=10, total_steps=100)
    wd = S.linear(0.0, 0.1, 100)
    g = {x["mup"]: x for x in mup.mup_param_groups({"w": (64, 64), "out": (10, 64)}, {"w": (16, 16), "out": (10, 16)},
                                                   lr=lr, weight_decay=wd)}
    assert g["hidden"]["lr"](50) == 0.25 * lr(50) and g["hidden"]["weight_decay"](50) == 4 * wd(50)
    assert g["output"]["lr"](50) == lr(50) and g["output"]["weight_decay"] is wd
    with pytest.raises(ValueError, match="readout='lr' belongs to convention='tp5'"):
        mup.mup_param_groups({"w": (4, 4)}, {"w": (2, 2)}, lr=1.0, readout="lr")
    plain = mup.mup_param_groups({"w": (64, 64)}, {"w": (16, 16)}, lr=0.01, weight_decay=0.1, decoupled_wd=True)
    assert (plain[0]["lr"], plain[0]["weight_decay"]) == (0.0025, 0.1)
    with pytest.raises(ValueError, match="convention must be one of"):
        mup.mup_param_groups({"w": (4, 4)}, {"w": (2, 2)}, lr=1.0, convention="TP5")


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
