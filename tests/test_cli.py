"""The ``npadam`` command line: ``npadam schedule`` dumps, plots, summaries and errors.

Most cases call ``npadam.cli.main`` in-process (capsys); one runs the installed
console script. Every dumped value is compared bit for bit with the library.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npadam import schedules
from npadam.cli import EXIT_INTERNAL, EXIT_USAGE, main
from npadam.cli._floatfmt import format_floats
from npadam.cli._named import named_schedules

ROOT = Path(__file__).resolve().parents[1]
WC = ["warmup-cosine", "--peak", "3e-4", "--warmup-steps", "20", "--total-steps", "200", "--final", "3e-5"]
WC_SCHED = schedules.warmup_cosine(peak=3e-4, warmup_steps=20, total_steps=200, final=3e-5)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.int64)


def read_csv(text: str) -> tuple[list[str], dict[str, np.ndarray]]:
    lines = text.strip("\n").split("\n")
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    cols = {name: np.array([float(r[i]) for r in rows]) for i, name in enumerate(header)}
    cols["step"] = np.array([int(r[0]) for r in rows])
    return header, cols


def same(values, expected) -> bool:
    return np.array_equal(bits(values), bits(expected))


# ---------------------------------------------------------------- config files

HF = {"lr_scheduler_type": "cosine", "learning_rate": 3e-4, "num_warmup_steps": 30, "num_training_steps": 300}
MEGATRON_YAML = """\
# Megatron arguments, spelled as on the command line
lr: 3e-4
min-lr: 3.0e-5
lr-decay-style: cosine
lr-warmup-iters: 10
train-iters: 100
global-batch-size: 4
weight-decay-incr-style: linear
start-weight-decay: 0.01
end-weight-decay: 0.1
"""
MEGATRON = {"lr": 3e-4, "min_lr": 3e-5, "lr_decay_style": "cosine", "lr_warmup_iters": 10, "train_iters": 100,
            "global_batch_size": 4, "weight_decay_incr_style": "linear", "start_weight_decay": 0.01,
            "end_weight_decay": 0.1}
DEEPSPEED = {
    "train_batch_size": 64, "gradient_accumulation_steps": 2, "gradient_clipping": 1.0,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 500, "warmup_num_steps": 50,
                                                       "warmup_type": "linear"}},
    "bf16": {"enabled": True}, "zero_optimization": {"stage": 2, "overlap_comm": True},
}
TORCH_TOML = """\
lr = 3e-4
scheduler = "OneCycleLR"
max_lr = 1e-3
total_steps = 400
"""
TORCH = {"lr": 3e-4, "scheduler": "OneCycleLR", "max_lr": 1e-3, "total_steps": 400}
COLOSSAL = {"type": "CosineAnnealingWarmupLR", "lr": 1e-3, "total_steps": 100, "warmup_steps": 10, "eta_min": 1e-5}
MEGATRON_ARGS = """\
torchrun pretrain_gpt.py \\
    --lr 3e-4 --min-lr 3e-5 --lr-decay-style WSD --lr-wsd-decay-style minus_sqrt \\
    --lr-wsd-decay-iters 20 --lr-warmup-iters 10 --train-iters 100   # a comment
"""
MEGATRON_ARGS_DICT = {"lr": 3e-4, "min_lr": 3e-5, "lr_decay_style": "WSD", "lr_wsd_decay_style": "minus_sqrt",
                      "lr_wsd_decay_iters": 20, "lr_warmup_iters": 10, "train_iters": 100}


@pytest.fixture
def cfgs(tmp_path) -> Path:
    (tmp_path / "hf.json").write_text(json.dumps(HF))
    (tmp_path / "megatron.yaml").write_text(MEGATRON_YAML)
    (tmp_path / "ds_config.json").write_text(json.dumps(DEEPSPEED, indent=2))
    (tmp_path / "torch.toml").write_text(TORCH_TOML)
    (tmp_path / "colossal.yml").write_text("type: CosineAnnealingWarmupLR\nlr: 1e-3\ntotal_steps: 100\n"
                                           "warmup_steps: 10\neta_min: 1e-5\n")
    (tmp_path / "megatron.args").write_text(MEGATRON_ARGS)
    return tmp_path


CONFIG_CASES = [  # framework, file, config dict, rows dumped by default (horizon + 10%)
    ("hf", "hf.json", HF, 330),
    ("megatron", "megatron.yaml", MEGATRON, 110),
    ("deepspeed", "ds_config.json", DEEPSPEED, 552),   # total_num_steps + 1, + 10%
    ("torch", "torch.toml", TORCH, 401),           # OneCycleLR stops at total_steps
    ("colossalai", "colossal.yml", COLOSSAL, 110),
    ("megatron", "megatron.args", MEGATRON_ARGS_DICT, 110),
]


@pytest.mark.parametrize("framework, name, config, rows", CONFIG_CASES,
                         ids=[c[1] for c in CONFIG_CASES])
def test_config_file_csv_is_exact(capsys, cfgs, framework, name, config, rows):
    rc, out, err = run(capsys, "schedule", "--framework", framework, "--config", cfgs / name)
    assert rc == 0, err
    assert err == ""
    header, cols = read_csv(out)
    expected = schedules.from_config(framework, config)
    assert header == ["step"] + [q for q, _ in expected.items()]
    assert header[:2] == ["step", "lr"]
    assert np.array_equal(cols["step"], np.arange(rows))
    for q, s in expected.items():
        assert same(cols[q], s(np.arange(rows))), q


def test_megatron_yaml_reads_3e_4_as_a_float(capsys, cfgs):
    rc, out, _ = run(capsys, "schedule", "--framework", "megatron", "--config", cfgs / "megatron.yaml",
                     "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["config"]["lr"] == 3e-4 and isinstance(doc["config"]["lr"], float)
    assert doc["config"]["lr-decay-style"] == "cosine"
    assert list(doc) == ["config", "step", "lr", "weight_decay"]


def test_columns_follow_the_schedule_set(capsys, cfgs):
    _, out, _ = run(capsys, "schedule", "--framework", "torch", "--config", cfgs / "torch.toml", "--steps", 5)
    assert out.splitlines()[0] == "step,lr,beta1"
    ds = dict(DEEPSPEED, scheduler={"type": "OneCycle", "params": {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3,
                                                                   "cycle_first_step_size": 10}})
    (cfgs / "onecycle.json").write_text(json.dumps(ds))
    _, out, _ = run(capsys, "schedule", "--framework", "deepspeed", "--config", cfgs / "onecycle.json")
    assert out.splitlines()[0] == "step,lr,beta1,beta2"


def test_config_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(HF)))
    rc, out, _ = run(capsys, "schedule", "--framework", "hf", "--config", "-", "--steps", 50)
    assert rc == 0
    _, cols = read_csv(out)
    assert same(cols["lr"], schedules.from_config("hf", HF).lr(np.arange(50)))


# ---------------------------------------------------------------- named schedules

def test_named_schedule_csv_to_stdout(capsys):
    rc, out, err = run(capsys, "schedule", *WC)
    assert rc == 0 and err == ""
    header, cols = read_csv(out)
    assert header == ["step", "lr"]
    assert np.array_equal(cols["step"], np.arange(220))          # total_steps + 10%
    assert same(cols["lr"], WC_SCHED(np.arange(220)))
    assert out.splitlines()[1:3] == ["0,0.0", f"1,{WC_SCHED(1)!r}"]


NAMED_ARGS = {
    "constant": ["--value", "0.1", "--steps", "10"],
    "linear": ["--init", "0", "--final", "1e-3", "--total-steps", "50"],
    "cosine": ["--init", "1e-3", "--total-steps", "50", "--final", "1e-5"],
    "polynomial": ["--init", "1e-3", "--final", "0", "--total-steps", "50", "--power", "2"],
    "exponential": ["--init", "1e-3", "--rate", "0.9", "--transition-steps", "3", "--staircase", "--steps", "40"],
    "inverse-sqrt": ["--peak", "1e-3", "--timescale", "10", "--steps", "40"],
    "one-minus-sqrt": ["--init", "1e-3", "--final", "1e-5", "--total-steps", "50"],
    "wsd": ["--peak", "1e-3", "--warmup-steps", "5", "--total-steps", "50", "--decay-steps", "10",
            "--decay", "1-sqrt"],
    "warmup-cosine": ["--peak", "1e-3", "--warmup-steps", "5", "--total-steps", "50", "--init", "1e-5"],
    "cosine-restarts": ["--peak", "1e-3", "--period", "7", "--period-mult", "2", "--peak-decay", "0.5",
                        "--steps", "60"],
    "one-cycle": ["--peak", "1e-3", "--total-steps", "50", "--three-phase", "--anneal", "linear"],
    "lr-range-test": ["--init", "1e-5", "--step-size", "10", "--rate", "3", "--steps", "40"],
    "weight-decay": ["--start", "0.01", "--end", "0.1", "--total-steps", "50", "--style", "cosine"],
}
NAMED_KWARGS = {
    "constant": dict(value=0.1),
    "linear": dict(init=0.0, final=1e-3, steps=50),
    "cosine": dict(init=1e-3, steps=50, final=1e-5),
    "polynomial": dict(init=1e-3, final=0.0, steps=50, power=2.0),
    "exponential": dict(init=1e-3, rate=0.9, transition_steps=3, staircase=True),
    "inverse-sqrt": dict(peak=1e-3, timescale=10),
    "one-minus-sqrt": dict(init=1e-3, final=1e-5, steps=50),
    "wsd": dict(peak=1e-3, warmup_steps=5, total_steps=50, decay_steps=10, decay="1-sqrt"),
    "warmup-cosine": dict(peak=1e-3, warmup_steps=5, total_steps=50, init=1e-5),
    "cosine-restarts": dict(peak=1e-3, period=7, period_mult=2, peak_decay=0.5),
    "one-cycle": dict(peak=1e-3, total_steps=50, three_phase=True, anneal="linear"),
    "lr-range-test": dict(init=1e-5, step_size=10, rate=3.0),
    "weight-decay": dict(start=0.01, end=0.1, steps=50, style="cosine"),
}


def test_every_building_block_is_named():
    assert set(NAMED_ARGS) <= set(named_schedules())
    assert not {"warmup", "join", "scale-steps", "multiply"} & set(named_schedules())   # composites


@pytest.mark.parametrize("name", list(NAMED_ARGS))
def test_named_schedule_values_are_exact(capsys, name):
    rc, out, err = run(capsys, "schedule", name, *NAMED_ARGS[name])
    assert rc == 0, err
    header, cols = read_csv(out)
    cls = named_schedules()[name].cls
    expected = cls(**NAMED_KWARGS[name])
    assert header == ["step", "weight_decay" if name == "weight-decay" else "lr"]
    n = cols["step"].size
    assert same(cols[header[1]], expected(np.arange(n)))
    assert json.loads(json.dumps(expected.to_dict())) == expected.to_dict()


def test_named_flags_accept_underscores_and_integer_spellings(capsys):
    rc, out, _ = run(capsys, "schedule", "warmup_cosine", "--peak", "3e-4", "--warmup-steps", "2e1",
                     "--total-steps", "2_00", "--final", "3e-5")
    assert rc == 0
    assert same(read_csv(out)[1]["lr"], WC_SCHED(np.arange(220)))


def test_momentum_one_cycle_is_a_beta1_column(capsys):
    _, out, _ = run(capsys, "schedule", "one-cycle", "--peak", "1", "--total-steps", "10", "--quantity", "momentum")
    assert out.splitlines()[0] == "step,beta1"


# ---------------------------------------------------------------- formats

def test_json_to_stdout(capsys):
    rc, out, _ = run(capsys, "schedule", *WC, "--format", "json", "--steps", 300)
    assert rc == 0
    doc = json.loads(out)
    assert list(doc) == ["config", "step", "lr"]
    assert doc["config"] == WC_SCHED.to_dict()
    assert doc["step"] == list(range(300))
    assert same(doc["lr"], WC_SCHED(np.arange(300)))


def test_json_config_is_the_input_config(capsys, cfgs):
    rc, out, _ = run(capsys, "schedule", "--framework", "deepspeed", "--config", cfgs / "ds_config.json",
                     "--format", "json", "--steps", 60)
    assert rc == 0
    doc = json.loads(out)
    assert doc["config"] == DEEPSPEED
    assert same(doc["lr"], schedules.from_config("deepspeed", DEEPSPEED).lr(np.arange(60)))


def test_npy_output(capsys, tmp_path, cfgs):
    path = tmp_path / "lr.npy"
    rc, out, err = run(capsys, "schedule", "--framework", "megatron", "--config", cfgs / "megatron.yaml",
                       "--format", "npy", "--output", path)
    assert rc == 0 and out == "" and err == ""
    arr = np.load(path)
    assert arr.dtype == np.dtype([("step", "<i8"), ("lr", "<f8"), ("weight_decay", "<f8")])
    expected = schedules.from_config("megatron", MEGATRON)
    assert np.array_equal(arr["step"], np.arange(110))
    assert same(arr["lr"], expected.lr(np.arange(110)))
    assert same(arr["weight_decay"], expected.weight_decay(np.arange(110)))


@pytest.mark.parametrize("ext", ["csv", "json", "npy"])
def test_format_from_output_extension(capsys, tmp_path, ext):
    path = tmp_path / f"lr.{ext}"
    rc, out, _ = run(capsys, "schedule", *WC, "-o", path)
    assert rc == 0 and out == ""
    if ext == "npy":
        assert same(np.load(path)["lr"], WC_SCHED(np.arange(220)))
    elif ext == "json":
        assert same(json.loads(path.read_text())["lr"], WC_SCHED(np.arange(220)))
    else:
        assert same(read_csv(path.read_text())[1]["lr"], WC_SCHED(np.arange(220)))


def test_output_file_not_named_npy_stays_as_named(capsys, tmp_path):
    path = tmp_path / "dump.bin"
    assert run(capsys, "schedule", *WC, "--format", "npy", "-o", path)[0] == 0
    assert path.exists() and not (tmp_path / "dump.bin.npy").exists()
    assert np.load(path)["lr"].size == 220


def test_long_dump_is_exact_in_every_format(capsys, tmp_path):
    n = 300_000
    sched = schedules.warmup_cosine(peak=1e-3, warmup_steps=1_000, total_steps=n, final=1e-5)
    args = ["schedule", "warmup-cosine", "--peak", "1e-3", "--warmup-steps", "1000", "--total-steps", n,
            "--final", "1e-5", "--steps", n]
    expected = sched(np.arange(n))
    for ext in ("csv", "json", "npy"):
        path = tmp_path / f"big.{ext}"
        assert run(capsys, *args, "-o", path)[0] == 0
        if ext == "csv":
            got = np.loadtxt(path, delimiter=",", skiprows=1)[:, 1]
        elif ext == "json":
            got = json.loads(path.read_text())["lr"]
        else:
            got = np.load(path)["lr"]
        assert same(got, expected), ext


def test_csv_text_is_repr(capsys):
    _, out, _ = run(capsys, "schedule", *WC)
    values = WC_SCHED(np.arange(220)).tolist()
    assert out.splitlines()[1:] == [f"{k},{v!r}" for k, v in enumerate(values)]


# ---------------------------------------------------------------- float formatting

def _check_repr(values) -> None:
    x = np.asarray(values, dtype=np.float64)
    assert format_floats(x) == [repr(v) for v in x.tolist()]


def test_float_text_matches_repr_on_hard_cases():
    rng = np.random.default_rng(0)
    p10 = 10.0 ** np.arange(-20, 30)
    hard = np.concatenate([
        p10, np.nextafter(p10, 0), np.nextafter(p10, np.inf), 2.0 ** np.arange(-60, 80), -p10,
        [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1.7976931348623157e308, 0.1, 0.2, 0.3, 1 / 3,
         9.999999999999999e22, 1e16, 1234567890123456.0, 0.09999999999999999, 1e-4, 1e-5, 3e-5],
        rng.integers(-10**6, 10**6, 3000) / 1000, np.round(rng.random(3000), 6), rng.random(3000),
        np.exp(rng.uniform(-80, 80, 5000)), rng.integers(0, 2**63, 5000, dtype=np.uint64).view(np.float64),
    ])
    _check_repr(hard)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=200))
def test_float_text_matches_repr(values):
    _check_repr(values)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 17), st.integers(-12, 25), st.lists(st.integers(1, 10**17), min_size=1, max_size=100))
def test_float_text_matches_repr_on_short_decimals(digits, exp, mantissas):
    _check_repr([float(f"{m % 10**digits or 1}e{exp}") for m in mantissas])


# ---------------------------------------------------------------- saved schedules

def test_schedule_json_from_to_dict(capsys, tmp_path):
    sched = schedules.join([schedules.linear(0.0, 1e-3, 10), schedules.cosine(1e-3, 90, 1e-5)], [10])
    path = tmp_path / "sched.json"
    path.write_text(json.dumps(sched.to_dict()))
    rc, out, err = run(capsys, "schedule", "--schedule-json", path, "--steps", 120)
    assert rc == 0, err
    assert same(read_csv(out)[1]["lr"], sched(np.arange(120)))


def test_schedule_json_from_schedule_set_and_from_a_dump(capsys, tmp_path):
    sset = schedules.from_config("megatron", MEGATRON)
    path = tmp_path / "set.json"
    path.write_text(json.dumps(sset.to_dict()))
    rc, out, _ = run(capsys, "schedule", "--schedule-json", path)
    assert rc == 0
    header, cols = read_csv(out)
    assert header == ["step", "lr", "weight_decay"]
    assert same(cols["weight_decay"], sset.weight_decay(np.arange(110)))
    dump = tmp_path / "dump.json"
    assert run(capsys, "schedule", *WC, "-o", dump)[0] == 0
    rc, out, _ = run(capsys, "schedule", "--schedule-json", dump, "--steps", 30)
    assert rc == 0 and same(read_csv(out)[1]["lr"], WC_SCHED(np.arange(30)))


# ---------------------------------------------------------------- plots

def test_png_plot(capsys, tmp_path, cfgs):
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    rc, out, err = run(capsys, "schedule", "--framework", "megatron", "--config", cfgs / "megatron.yaml",
                       "--plot", png, "--compare", f"hf:{cfgs / 'hf.json'}")
    assert rc == 0, err
    assert out == ""                            # a plot alone: no data dump
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "lr.svg"
    assert run(capsys, "schedule", *WC, "--plot", svg, "--steps", 100_000)[0] == 0
    assert b"<svg" in svg.read_bytes()[:1000]


def test_png_plot_and_data_together(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    rc, out, _ = run(capsys, "schedule", *WC, "--plot", png, "--format", "csv")
    assert rc == 0
    assert png.stat().st_size > 1000
    assert same(read_csv(out)[1]["lr"], WC_SCHED(np.arange(220)))


def test_terminal_plot_fits_80x24(capsys):
    rc, out, err = run(capsys, "schedule", *WC, "--plot", "terminal")
    assert rc == 0 and err == ""
    lines = out.rstrip("\n").split("\n")
    assert len(lines) <= 24
    assert max(map(len, lines)) <= 80
    assert sum(line.count("*") for line in lines) > 60
    assert "0.0003" in out and "219" in out and "warmup-cosine" in out


def test_terminal_plot_size_flags(capsys):
    rc, out, _ = run(capsys, "schedule", *WC, "--plot", "terminal", "--width", 120, "--height", 40, "--log-y")
    assert rc == 0
    lines = out.rstrip("\n").split("\n")
    assert len(lines) <= 40 and max(map(len, lines)) <= 120
    assert max(map(len, lines)) > 100
    assert "log scale" in out


def test_terminal_plot_goes_to_stderr_when_data_is_on_stdout(capsys):
    rc, out, err = run(capsys, "schedule", *WC, "--plot", "terminal", "--format", "csv")
    assert rc == 0
    assert same(read_csv(out)[1]["lr"], WC_SCHED(np.arange(220)))   # stdout is only data
    assert "warmup-cosine" in err and "|" in err


def test_compare_overlays_schedules(capsys, tmp_path, cfgs):
    saved = tmp_path / "mine.json"
    saved.write_text(json.dumps(schedules.wsd(3e-4, 30, 300, 60).to_dict()))
    dump = tmp_path / "dump.json"
    assert run(capsys, "schedule", *WC, "-o", dump)[0] == 0
    rc, out, err = run(capsys, "schedule", "--framework", "hf", "--config", cfgs / "hf.json",
                       "--plot", "terminal", "--compare", f"megatron:{cfgs / 'megatron.yaml'}",
                       "--compare", saved, "--compare", dump, "--compare", f"torch:{cfgs / 'torch.toml'}")
    assert rc == 0, err
    for label, mark in (("hf:hf.json", "*"), ("megatron:megatron.yaml", "+"), ("mine.json", "o"),
                        ("dump.json", "x"), ("torch:torch.toml", "#")):
        assert f"{mark} {label}" in out
        assert out.count(mark) > 5


def test_summary_on_stderr(capsys):
    rc, out, err = run(capsys, "schedule", *WC, "--summary")
    assert rc == 0
    assert out.startswith("step,lr\n")
    values = WC_SCHED(np.arange(220))
    assert "warmup-cosine: 220 steps" in err
    assert "peak 0.0003 at step 20 (warmup ends at step 20)" in err
    assert "final 3e-05 at step 219" in err
    assert f"= {float(values.sum()):.6g}" in err
    assert len(err.splitlines()) <= 24


def test_summary_with_compare_and_plateau(capsys, cfgs):
    rc, _, err = run(capsys, "schedule", "wsd", "--peak", "1e-3", "--warmup-steps", "10", "--total-steps", "100",
                     "--decay-steps", "20", "--summary", "--compare", f"torch:{cfgs / 'torch.toml'}",
                     "-o", os.devnull, "--steps", 500)
    assert rc == 0
    assert "held to step 80" in err
    assert "torch:torch.toml: 401 steps" in err          # OneCycleLR stops at total_steps
    assert "nan" not in err


def test_no_summary_by_default_when_not_a_terminal(capsys):
    _, _, err = run(capsys, "schedule", *WC)
    assert err == ""


# ---------------------------------------------------------------- misc commands

def test_version_list_help(capsys):
    from npadam import __version__
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"npadam {__version__}"
    rc, out, _ = run(capsys, "schedule", "--list")
    assert rc == 0
    assert "warmup-cosine" in out and "--warmup-steps INT" in out and "megatron" in out and "hf" in out
    rc, out, _ = run(capsys, "schedule", "--help")
    assert rc == 0 and "--framework" in out and "examples:" in out
    rc, out, _ = run(capsys, "schedule", "wsd", "--help")
    assert rc == 0 and "--decay-steps" in out
    rc, out, _ = run(capsys)
    assert rc == 0 and "schedule" in out and "demo" in out


# ---------------------------------------------------------------- errors

ERRORS = [
    (["schedule", "--framework", "nope", "--config", "@hf.json"], "nope"),
    (["schedule", "--framework", "hf", "--config", "@missing.json"], "missing.json"),
    (["schedule", "--framework", "hf", "--config", "@bad.json"], "JSON"),
    (["schedule", "--framework", "megatron", "--config", "@bad.yaml"], "YAML"),
    (["schedule", "--framework", "torch", "--config", "@bad.toml"], "TOML"),
    (["schedule", "--framework", "hf", "--config", "@list.json"], "mapping"),
    (["schedule", "--framework", "hf", "--config", "@no_total.json"], "num_training_steps"),
    (["schedule", "--framework", "hf", "--config", "@unknown_type.json"], "lr_scheduler_type"),
    (["schedule", "--framework", "megatron", "--config", "@hf.json"], "lr_scheduler_type"),
    (["schedule", "--framework", "deepspeed", "--config", "@ds_unknown.json"], "WarmupFoo"),
    (["schedule", "--framework", "deepspeed", "--config", "@ds_no_lr.json"], "lr"),
    (["schedule", "--framework", "torch", "--config", "@torch.toml", "--steps", "1000"], "OneCycleLR"),
    (["schedule", "--framework", "hf", "--config", "@dir"], "directory"),
    (["schedule", "--config", "@hf.json"], "--framework"),
    (["schedule", "--framework", "hf"], "--config"),
    (["schedule"], "no schedule"),
    (["schedule", "warmup-cosine", "--config", "@hf.json", "--framework", "hf", "--peak", "1",
      "--warmup-steps", "1", "--total-steps", "5"], "one schedule source"),
    (["schedule", "warmup-cosin"], "warmup-cosin"),
    (["schedule", "warmup-cosine", "--peak", "1", "--warmup-steps", "2"], "--total-steps"),
    (["schedule", "warmup-cosine", "--peak", "x", "--warmup-steps", "2", "--total-steps", "9"], "--peak"),
    (["schedule", "warmup-cosine", "--peak", "1", "--warmup-steps", "20", "--total-steps", "9"], "warmup_steps"),
    (["schedule", "warmup-cosine", "--peak", "1", "--warmup-steps", "2", "--total-steps", "9", "--fnal", "0"],
     "did you mean --final"),
    (["schedule", "wsd", "--peak", "1", "--warmup-steps", "1", "--total-steps", "9", "--decay-steps", "2",
      "--decay", "sideways"], "sideways"),
    (["schedule", "constant", "--value", "1"], "--steps"),
    (["schedule", "constant", "--value", "1", "--steps", "0"], "--steps"),
    (["schedule", "constant", "--value", "1", "--steps", "2.5"], "--steps"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "--format", "npy"], "--output"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "--format", "xml"], "xml"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "-o", "@nodir/x.csv"], "cannot write"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "--plot", "lr.xyz"], "lr.xyz"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "--plot", "terminal", "--width", "10"],
     "--width: expected at least 20 columns, got '10'"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "--compare", "@missing.json"], "missing.json"),
    (["schedule", "constant", "--value", "1", "--steps", "5", "--compare", "@hf.json"], "not a saved schedule"),
    (["schedule", "--schedule-json", "@bad_type.json"], "unknown schedule type"),
    (["schedule", "--schedule-json", "@hf.json"], "not a saved schedule"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize("argv, needle", ERRORS, ids=[f"{i}-{e[1]}" for i, e in enumerate(ERRORS)])
def test_errors_exit_2_with_one_line(capsys, cfgs, argv, needle):
    (cfgs / "bad.json").write_text('{"learning_rate": 3e-4,')
    (cfgs / "bad.yaml").write_text("lr: [1, 2\n")
    (cfgs / "bad.toml").write_text("lr = \n")
    (cfgs / "list.json").write_text("[1, 2]")
    (cfgs / "no_total.json").write_text('{"lr_scheduler_type": "cosine", "learning_rate": 3e-4}')
    (cfgs / "unknown_type.json").write_text('{"lr_scheduler_type": "zigzag", "num_training_steps": 9}')
    (cfgs / "ds_unknown.json").write_text('{"scheduler": {"type": "WarmupFoo", "params": {}}}')
    (cfgs / "ds_no_lr.json").write_text('{"scheduler": {"type": "WarmupCosineLR", '
                                        '"params": {"total_num_steps": 10}}}')
    (cfgs / "bad_type.json").write_text('{"type": "zigzag"}')
    (cfgs / "dir").mkdir()
    argv = [str(cfgs / a[1:]) if a.startswith("@") else a for a in argv]    # @name: a file in cfgs
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("npadam: error: ")
    assert needle in lines[0]


# ---------------------------------------------------------------- hostile input (review issue 8, item 7)
#
# Every case below was a traceback, an "internal error", a hang or a silent surprise before;
# each must now be one line naming the flag (and the value or the file), exit status 2.

CONST = ["schedule", "constant", "--value", "1", "--steps", "5"]


def user_error(rc: int, err: str) -> str:
    """The single ``npadam: error:`` line of a bad-input failure (exit status 2, not 70)."""
    assert rc == EXIT_USAGE, (rc, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("npadam: error: ")
    return lines[0]


def test_exit_statuses_tell_bad_input_from_a_bug(capsys, monkeypatch):
    import npadam.cli.schedule as cmd

    def boom(_argv):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cmd, "main", boom)
    rc, _, err = run(capsys, "schedule")
    assert EXIT_INTERNAL != EXIT_USAGE
    assert rc == EXIT_INTERNAL and "internal error: RuntimeError: a bug" in err

    for exc, needle in ((MemoryError(), "out of memory"), (RecursionError(), "nested too deeply")):
        def fail(_argv, exc=exc):
            raise exc
        monkeypatch.setattr(cmd, "main", fail)
        rc, _, err = run(capsys, "schedule")
        assert needle in user_error(rc, err)


LIMITS = [  # argv, fragments of the one error line
    (CONST[:-1] + ["1e12"], ["--steps: 1,000,000,000,000 steps (1e12) would need 8 TB", "at most 100,000,000"]),
    (CONST[:-1] + [str(10 ** 30)], ["--steps:", "at most 100,000,000"]),
    (CONST + ["--plot", "terminal", "--width", str(10 ** 9)], ["--width: expected at most 1,000 columns"]),
    (CONST + ["--plot", "terminal", "--height", "1e100"], ["--height: expected at most 1,000 lines"]),
    (CONST + ["--plot", "terminal", "--width", "1e400"], ["--width: expected an integer, got '1e400'"]),
    (CONST + ["--plot", "terminal", "--height", "-5"], ["--height: expected at least 6 lines"]),
    (["schedule", "linear", "--init", "0", "--final", "1", "--total-steps", "1e12"],
     ["linear --total-steps 1000000000000: dumping its length + 10%", "give --steps N"]),
    (["schedule", "linear", "--init", "0", "--final", "1", "--total-steps", "1e300", "--steps", "5"],
     ["--total-steps: expected an integer of magnitude at most 2**53"]),
    (["schedule", "cosine", "--init", "1", "--total-steps", str(10 ** 30), "--steps", "5"], ["--total-steps:"]),
    (["schedule", "--framework", "hf", "--config", "@long.json"],
     ["--config", "long.json: dumping its length + 10%: 1,100,000,000,000 steps", "give --steps N"]),
]


@pytest.mark.parametrize("argv, fragments", LIMITS, ids=[f"{i}-{a[-2]}" for i, (a, _) in enumerate(LIMITS)])
def test_limits_are_input_errors_checked_before_allocating(capsys, cfgs, monkeypatch, argv, fragments):
    (cfgs / "long.json").write_text(json.dumps(dict(HF, num_training_steps=10 ** 12)))
    monkeypatch.setattr(np, "arange", None)       # nothing may be evaluated before the check
    rc, out, err = run(capsys, *[str(cfgs / a[1:]) if a.startswith("@") else a for a in argv])
    line = user_error(rc, err)
    assert out == ""
    for fragment in fragments:
        assert fragment in line


def _nested(depth: int, ext: str) -> str:
    if ext == "toml":
        return ("extra = " + "[" * depth + "]" * depth + "\n[scheduler]\ntype = \"WarmupLR\"\n"
                "[scheduler.params]\nwarmup_num_steps = 10\n[optimizer.params]\nlr = 1e-3\n")
    extra = "[" * depth + "]" * depth
    if ext == "yaml":
        return ("scheduler: {type: WarmupLR, params: {warmup_num_steps: 10}}\n"
                f"optimizer: {{params: {{lr: 1e-3}}}}\nextra: {extra}\n")
    return ('{"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}, '
            f'"optimizer": {{"params": {{"lr": 1e-3}}}}, "extra": {extra}}}')


@pytest.mark.parametrize("ext", ["json", "yaml", "toml"])
@pytest.mark.parametrize("depth", [99, 150, 5000])
def test_deep_nesting_is_an_input_error(capsys, tmp_path, ext, depth):
    """A config nested thousands deep was a RecursionError ("internal error"); 100 levels are allowed."""
    path = tmp_path / f"deep.{ext}"
    path.write_text(_nested(depth, ext))
    t0 = time.perf_counter()
    rc, out, err = run(capsys, "schedule", "--framework", "deepspeed", "--config", path, "--steps", 5)
    if depth < 100:
        assert rc == 0, err
        return
    line = user_error(rc, err)
    assert f"--config {path}: nested more than 100 levels deep" in line
    assert time.perf_counter() - t0 < 10


def test_deeply_joined_schedule_json_is_an_input_error(capsys, tmp_path):
    s = {"type": "constant", "value": 1.0}
    for _ in range(300):
        s = {"type": "join", "schedules": [s, {"type": "constant", "value": 2.0}], "boundaries": [1]}
    path = tmp_path / "joined.json"
    path.write_text(json.dumps(s))
    rc, _, err = run(capsys, "schedule", "--schedule-json", path, "--steps", 5)
    assert f"--schedule-json {path}: nested more than 100 levels deep" in user_error(rc, err)


def _alias_bomb() -> str:
    """~1 KB of YAML whose aliases expand to 9**9 (387 million) strings."""
    lines = ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return ("optimizer: {type: AdamW, params: {lr: 1e-3}}\n"
            "scheduler: {type: WarmupLR, params: {warmup_num_steps: 10}}\n"
            "zero_optimization:\n" + "\n".join(lines) + "\n")


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    """Before: the dump of the config expanded the aliases without bound (minutes, gigabytes)."""
    bomb = _alias_bomb()
    assert len(bomb) < 1100
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "npadam", "schedule", "--framework", "deepspeed", "--config",
                          str(path), "--steps", "5", "--format", "json", "-o", str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert time.perf_counter() - t0 < 60
    line = user_error(res.returncode, res.stderr)
    assert f"--config {path}: its aliases (*name) expand to" in line and "at most 100,000" in line
    assert not (tmp_path / "out.json").exists()


def test_yaml_aliases_within_the_bound_work_and_recursive_ones_are_refused(capsys, tmp_path):
    from npadam.cli._config import load_mapping

    ok = tmp_path / "anchors.yaml"
    ok.write_text("base: &base {lr: 3e-4, min-lr: 3e-5}\n<<: *base\nlr: 1e-3\ntags: [*base, *base]\n")
    assert load_mapping(str(ok)) == {"base": {"lr": 3e-4, "min-lr": 3e-5}, "lr": 1e-3, "min-lr": 3e-5,
                                     "tags": [{"lr": 3e-4, "min-lr": 3e-5}] * 2}   # a merge key may override
    rec = tmp_path / "rec.yaml"
    rec.write_text("lr: 1e-3\ntrain_iters: 10\nx: &x [1, *x]\n")
    rc, _, err = run(capsys, "schedule", "--framework", "megatron", "--config", rec, "--steps", 5)
    assert f"--config {rec}: an alias refers to a node that contains it" in user_error(rc, err)


def test_unbounded_input_file_is_refused(tmp_path):
    """``--config /dev/zero`` read forever before; now at most 256 MiB are read."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    res = subprocess.run([sys.executable, "-m", "npadam", "schedule", "--framework", "hf", "--config", "/dev/zero",
                          "--steps", "5"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "--config /dev/zero: larger than 256 MiB" in user_error(res.returncode, res.stderr)


BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00"
HOSTILE_FILES = [  # file name, bytes (None: a directory), fragment of the error after "--config PATH"
    ("empty.json", b"", " is empty"),
    ("empty.yaml", b"", " is empty"),
    ("empty.toml", b"", " is empty"),
    ("empty.args", b"", " is empty"),
    ("blank.json", b"  \n\t\n", " is empty"),
    ("comment.yaml", b"# nothing\n", " is empty"),
    ("null.json", b"null", " is empty"),
    ("binary.json", BINARY, ": cannot read: not a UTF-8 text file"),
    ("binary", BINARY, ": cannot read: not a UTF-8 text file"),
    ("latin1.yaml", "lr: 1e-3\nname: \u00e9t\u00e9\n".encode("latin-1"), ": cannot read: not a UTF-8 text file"),
    ("a_dir.json", None, ": cannot read: it is a directory"),
    ("list.yaml", b"- 1\n- 2\n", ": expected a mapping"),
    ("dup.json", b'{"learning_rate": 1e-3, "learning_rate": 2e-3}', ": duplicate key 'learning_rate'"),
    ("dup.yaml", b"learning_rate: 1e-3\nlearning_rate: 2e-3\n", ": duplicate key 'learning_rate' at line 2"),
    ("huge.json", b'{"lr_scheduler_type": "linear", "learning_rate": 1' + b"0" * 30 + b"}",
     ": learning_rate = 1" + "0" * 30 + ": out of range"),
    ("huger.yaml", b"lr_kwargs: {a: [1" + b"0" * 500 + b"]}\n", ": lr_kwargs.a[0] = an integer of about 501 digits"),
    ("digits.yaml", b"learning_rate: 1" + b"0" * 5000 + b"\n", ": cannot parse as YAML: Exceeds the limit"),
    ("digits.toml", b"learning_rate = 1" + b"0" * 5000 + b"\n", ": cannot parse as TOML:"),
    ("deep_args.txt", b"--lr 1 'unclosed", ": cannot parse as command-line arguments"),
]


@pytest.mark.parametrize("name, data, fragment", HOSTILE_FILES, ids=[c[0] for c in HOSTILE_FILES])
def test_hostile_config_files(capsys, tmp_path, name, data, fragment):
    path = tmp_path / name
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    rc, out, err = run(capsys, "schedule", "--framework", "hf", "--config", path, "--steps", 5)
    line = user_error(rc, err)
    assert out == ""
    assert f"--config {path}{fragment}" in line


def test_config_with_a_byte_order_mark_is_read(capsys, tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(HF).encode())
    rc, out, err = run(capsys, "schedule", "--framework", "hf", "--config", path, "--steps", 5)
    assert rc == 0, err
    assert same(read_csv(out)[1]["lr"], schedules.from_config("hf", HF).lr(np.arange(5)))


@pytest.mark.parametrize("argv, fragment", [
    (["schedule", "--framework", "hf", "--config", "a\0b"], "--config 'a\\x00b': not a valid file name"),
    (["schedule", "--framework", "hf", "--config", ""], "--config '': expected a file name"),
    (["schedule", "--schedule-json", "a\0b"], "--schedule-json 'a\\x00b': not a valid file name"),
    (CONST + ["--compare", ""], "--compare '': expected a file name"),
    (CONST + ["--compare", "hf:"], "--compare hf:: expected a file name"),
    (CONST + ["--compare", "x\0y"], "--compare 'x\\x00y': not a valid file name"),
    (CONST + ["-o", "a\0b"], "--output 'a\\x00b': not a valid file name"),
    (CONST + ["-o", ""], "--output: expected a file name"),
    (CONST + ["--plot", "a\0b.png"], "--plot 'a\\x00b.png': not a valid file name"),
], ids=range(9))
def test_bad_file_names(capsys, argv, fragment):
    rc, _, err = run(capsys, *argv)
    assert fragment in user_error(rc, err)


@pytest.mark.parametrize("column, fragment", [
    (["a"], "'lr' must be a list of numbers"), ([[1, 2]], "'lr' must be a list of numbers"),
    ([True], "'lr' must be a list of numbers"), ({"x": 1}, "a schedule dict needs a 'type' key"),
])
def test_compare_with_a_bad_dump(capsys, tmp_path, column, fragment):
    path = tmp_path / "dump.json"
    path.write_text(json.dumps({"step": [0], "lr": column}))
    rc, _, err = run(capsys, *CONST, "--compare", path, "--plot", "terminal")
    assert f"--compare {path}: {fragment}" in user_error(rc, err)


def test_compare_with_nulls_in_a_dump(capsys, tmp_path):
    path = tmp_path / "dump.json"
    path.write_text(json.dumps({"step": [0, 1, 2], "lr": [1.0, None, 0.5]}))
    rc, out, err = run(capsys, *CONST, "--compare", path, "--plot", "terminal")
    assert rc == 0, err
    assert "* constant" in out and "+ dump.json" in out


def test_library_overflow_names_the_file(capsys, tmp_path):
    """A float too large for an int (1e30 samples per batch) was an OverflowError ("internal error")."""
    path = tmp_path / "megatron.json"
    path.write_text(json.dumps(dict(MEGATRON, global_batch_size=1e30)))
    rc, _, err = run(capsys, "schedule", "--framework", "megatron", "--config", path, "--steps", 5)
    assert f"--config {path}: global_batch_size is too large: 1e+30 (at most 2**62)" in user_error(rc, err)

@pytest.mark.parametrize("framework, config", [
    ("colossalai", {"type": "CosineAnnealingWarmupLR", "lr": 1.7e308, "total_steps": 5, "warmup_steps": 2}),
    ("torch", {"scheduler": "CosineAnnealingLR", "lr": 1.7e308, "T_max": 4, "eta_min": -1.7e308}),
])
def test_values_that_overflow_are_an_error_not_an_inf_dump(capsys, tmp_path, framework, config):
    """Huge but finite inputs overflowed inside the formula: the dump printed inf/nan with status 0."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    rc, out, err = run(capsys, "schedule", "--framework", framework, "--config", path, "--steps", 6)
    assert "the values overflow float64" in user_error(rc, err)
    assert "inf" not in out and "RuntimeWarning" not in err



def test_named_schedule_errors_lead_with_the_flags(capsys):
    rc, _, err = run(capsys, "schedule", "warmup-cosine", "--peak", "1", "--warmup-steps", "20", "--total-steps", "9")
    assert user_error(rc, err).startswith("npadam: error: --warmup-steps 20 --total-steps 9: warmup-cosine: ")
    rc, _, err = run(capsys, "schedule", "constant", "--value", "nan", "--steps", "5")
    assert user_error(rc, err) == "npadam: error: --value nan: constant: value must be finite, got nan"
    rc, _, err = run(capsys, "schedule", "weight-decay", "--start", "0", "--end", "1", "--total-steps", "0")
    assert user_error(rc, err).startswith("npadam: error: --total-steps 0: weight-decay: steps must be >= 1")


# -------- every option of every command, with hostile values

HOSTILE_VALUES = ["nan", "inf", "-inf", "-1", "0", "1e400", "1e12", "9" * 30, "abc", "", "1.5", "0x10", "\0"]
SCHEDULE_FLAGS = {  # flag -> argv with {} where the value goes
    "--framework": ["schedule", "--framework", "{}", "--config", "@hf.json"],
    "--config": ["schedule", "--framework", "hf", "--config", "{}"],
    "--schedule-json": ["schedule", "--schedule-json", "{}", "--steps", "5"],
    "--steps": ["schedule", "constant", "--value", "1", "--steps", "{}"],
    "--format": CONST + ["--format", "{}"],
    "--output": CONST + ["--output", "{}"],
    "--plot": CONST + ["--plot", "{}"],
    "--compare": CONST + ["--compare", "{}"],
    "--width": CONST + ["--plot", "terminal", "--width", "{}"],
    "--height": CONST + ["--plot", "terminal", "--height", "{}"],
}
DEMO_BASE = ["demo", "--steps", "2", "--hidden", "4", "--batch", "8", "--no-check", "--no-plot"]
DEMO_FLAGS = ["--steps", "--hidden", "--batch", "--dtype", "--kernel", "--lr", "--weight-decay", "--seed"]


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def _flag_cases() -> list[tuple[str, list[str]]]:
    cases = [(flag, [v if a == "{}" else a for a in argv]) for flag, argv in SCHEDULE_FLAGS.items()
             for v in HOSTILE_VALUES]
    for name, named in named_schedules().items():
        base = ["schedule", name, *NAMED_ARGS[name]]
        for p in named.params:
            if p.type != "bool":
                cases += [(f"--{p.flag}", _with(base, f"--{p.flag}", v)) for v in HOSTILE_VALUES]
    cases += [(flag, _with(DEMO_BASE, flag, v)) for flag in DEMO_FLAGS for v in HOSTILE_VALUES]
    return cases


FLAG_CASES = _flag_cases()


def test_hostile_flag_cases_cover_every_valued_option():
    from npadam.cli import demo
    from npadam.cli._args import build_parser

    def valued(parser) -> set[str]:
        return {a.option_strings[-1] for a in parser._actions if a.option_strings and a.nargs is None}
    flags = {flag for flag, _ in FLAG_CASES}
    assert valued(build_parser(None)) == set(SCHEDULE_FLAGS)
    assert valued(demo.build_parser()) == set(DEMO_FLAGS)
    for named in named_schedules().values():
        assert valued(build_parser(named)) - valued(build_parser(None)) <= flags


FLAG_IDS = [f"{i}:{' '.join(a[:2])} {f} {a[a.index(f) + 1]!r}" for i, (f, a) in enumerate(FLAG_CASES)]


@pytest.mark.parametrize("flag, argv", FLAG_CASES, ids=FLAG_IDS)
def test_every_bad_value_of_every_flag_names_the_flag(capsys, cfgs, monkeypatch, flag, argv):
    monkeypatch.chdir(cfgs)                   # --output VALUE may write a file: here
    rc, _, err = run(capsys, *[str(cfgs / a[1:]) if a.startswith("@") else a for a in argv])
    if rc == 0:                               # a value that happens to be valid for this flag
        return
    line = user_error(rc, err)
    assert flag in line, line


@pytest.mark.parametrize("value", HOSTILE_VALUES + ["1"])
def test_demo_lr_find_bad_steps_name_the_flag(capsys, value):
    """``npadam demo --lr-find`` takes its length from ``--steps`` (at least 2 updates): every
    bad value is one line naming ``--steps``, before any work."""
    rc, out, err = run(capsys, "demo", "--lr-find", "--steps", value, "--hidden", "4", "--batch", "8")
    assert "--steps" in user_error(rc, err) and out == ""


# -------- output files

def test_output_is_not_replaced_without_force(capsys, tmp_path):
    path = tmp_path / "lr.csv"
    path.write_text("precious\n")
    rc, out, err = run(capsys, *CONST, "-o", path)
    assert user_error(rc, err) == (f"npadam: error: --output {path}: the file exists; "
                                   f"give --force (-f) to replace it")
    assert path.read_text() == "precious\n"
    for force in ("--force", "-f"):
        path.write_text("precious\n")
        rc, _, err = run(capsys, *CONST, "-o", path, force)
        assert rc == 0, err
        assert read_csv(path.read_text())[0] == ["step", "lr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.csv"]     # no temporary file left


def test_plot_file_is_not_replaced_without_force(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    png.write_bytes(b"precious")
    rc, _, err = run(capsys, *CONST, "--plot", png)
    assert f"--plot {png}: the file exists; give --force" in user_error(rc, err)
    assert png.read_bytes() == b"precious"
    rc, _, err = run(capsys, *CONST, "--plot", png, "--force")
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]


@pytest.mark.parametrize("argv, fragment", [
    (["-o", "@sub"], "--output @sub: cannot write: it is a directory"),
    (["-o", "@nodir/x.csv"], "--output @nodir/x.csv: cannot write: the directory"),
    (["--plot", "@nodir/x.png"], "--plot @nodir/x.png: cannot write: the directory"),
    (["-o", "@same.png", "--format", "csv", "--plot", "@same.png"], "--output and --plot name the same file"),
], ids=["dir", "no-dir", "plot-no-dir", "same"])
def test_bad_output_paths(capsys, tmp_path, argv, fragment):
    (tmp_path / "sub").mkdir()
    argv = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in argv]
    rc, _, err = run(capsys, *CONST, *argv)
    assert fragment.replace("@", str(tmp_path) + "/") in user_error(rc, err)


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_no_half_file(capsys, tmp_path, monkeypatch, existing):
    from npadam.cli import _writers

    path = tmp_path / "lr.csv"
    if existing:
        path.write_text("old\n")

    def interrupted(steps, columns, chunk=_writers.CHUNK):
        yield b"step,lr\n0,1.0\n"
        raise KeyboardInterrupt
    monkeypatch.setattr(_writers, "csv_chunks", interrupted)
    rc, _, _ = run(capsys, *CONST, "-o", path, "--force")
    assert rc == 130
    assert (path.read_text() == "old\n") if existing else not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["lr.csv"] if existing else [])


def test_output_file_modes(capsys, tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    umask = os.umask(0o022)
    try:
        path = tmp_path / "new.csv"
        assert run(capsys, *CONST, "-o", path)[0] == 0
        assert path.stat().st_mode & 0o777 == 0o644              # not mkstemp's 0o600
        path.chmod(0o640)
        assert run(capsys, *CONST, "-o", path, "--force")[0] == 0
        assert path.stat().st_mode & 0o777 == 0o640              # a replaced file keeps its mode
    finally:
        os.umask(umask)


def test_output_to_dev_stdout_redirected_to_a_file_writes_through(tmp_path):
    """``-o /dev/stdout > file`` must write into the caller's file, not replace what the link
    resolves to (the file the shell opened) with a new one."""
    if not os.path.exists("/dev/stdout") or not sys.platform.startswith("linux"):
        pytest.skip("Linux /dev/stdout")
    path = tmp_path / "redirected.csv"
    with open(path, "wb") as f:
        inode = os.fstat(f.fileno()).st_ino
        res = subprocess.run([sys.executable, "-m", "npadam", *CONST, "-o", "/dev/stdout"], stdout=f,
                             stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert path.stat().st_ino == inode
    assert path.read_text().startswith("step,lr\n0,1.0\n")


def test_output_through_a_symlink_replaces_the_target(capsys, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert run(capsys, *CONST, "-o", link, "--force")[0] == 0
    assert link.is_symlink() and target.read_text().startswith("step,lr\n")


# ---------------------------------------------------------------- the installed script

def _script() -> str | None:
    cand = Path(sys.executable).with_name("npadam")
    return str(cand) if cand.exists() else shutil.which("npadam")


def test_console_script(tmp_path):
    script = _script()
    if script is None:
        pytest.skip("the npadam console script is not installed")
    out = subprocess.run([script, "schedule", *WC], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert same(read_csv(out.stdout)[1]["lr"], WC_SCHED(np.arange(220)))
    bad = subprocess.run([script, "schedule", "--framework", "hf", "--config", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("npadam: error: ")
    assert "Traceback" not in bad.stderr


def test_imports_stay_light():
    code = ("import sys, npadam; assert 'npadam.cli' not in sys.modules; "
            "from npadam.cli import main; "
            "rc = main(['schedule', 'warmup-cosine', '--peak', '1', '--warmup-steps', '1', '--total-steps', '9', "
            "'--plot', 'terminal', '-o', '" + os.devnull.replace("\\", "/") + "']); "
            "assert rc == 0; assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
            "assert 'torch' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ npadam config (issue 8: the CLI reads npadam.config files)
_RUN_YAML = """optimizer:
  lr: 3.0e-4
  min_lr: 3.0e-5
  bf16: true
scheduler:
  lr_decay_style: WSD
  lr_wsd_decay_iters: 200
  lr_warmup_fraction: 0.01
train:
  train_iters: 1000
"""


def test_config_command_describes_and_checks(capsys, tmp_path):
    (tmp_path / "m.yaml").write_text(_RUN_YAML)
    rc, out, err = run(capsys, "config", tmp_path / "m.yaml")
    assert rc == 0, err
    assert "valid" in out and "warmup 10 / decay 1000 / wd increment 1000 / WSD decay 200 steps" in out
    (tmp_path / "m.args").write_text("--lr 3e-4 --fp16 --hysteresis 3\n--train-iters 100 --lr-warmup-iters 10\n")
    rc, out, err = run(capsys, "config", tmp_path / "m.args", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["optimizer"] == {"lr": 3e-4, "fp16": True, "hysteresis": 3}
    assert doc["derived"]["lr_warmup_steps"] == 10


@pytest.mark.parametrize("text, match", [
    ("lr: 1\nadam_beta: 0.9\n", "unknown field 'adam_beta' \\(did you mean"),
    ("lr: 1\nuse_distributed_optimizer: true\n", "use_distributed_optimizer=True needs sharding"),
    ("lr: 1\ntrain_iters: 100\nlr_warmup_iters: 100\n", "warmup \\(100 steps\\) must be shorter"),
    ("lr: 1\nfp16: true\nbf16: true\n", "fp16 and bf16 are both set"),
])
def test_config_command_rejects(capsys, tmp_path, text, match):
    (tmp_path / "bad.yaml").write_text(text)
    rc, out, err = run(capsys, "config", tmp_path / "bad.yaml")
    assert rc == EXIT_USAGE and out == ""
    assert err.startswith(f"npadam: error: {tmp_path / 'bad.yaml'}") and len(err.splitlines()) == 1
    import re
    assert re.search(match, err), err


def test_schedule_reads_megatron_run_configs(capsys, tmp_path):
    (tmp_path / "m.yaml").write_text(_RUN_YAML)
    rc, out, err = run(capsys, "schedule", "--framework", "megatron", "--config", tmp_path / "m.yaml",
                       "--format", "json", "--steps", "1000")
    assert rc == 0, err
    want = schedules.from_config("megatron", {"lr": 3e-4, "min_lr": 3e-5, "lr_decay_style": "WSD",
                                              "lr_wsd_decay_iters": 200, "lr_warmup_fraction": 0.01,
                                              "train_iters": 1000})
    got = json.loads(out)
    lr = np.asarray(got["lr"] if "lr" in got else got["columns"]["lr"], dtype=np.float64)
    assert (bits(lr) == bits(want.lr(np.arange(1000)))).all()
