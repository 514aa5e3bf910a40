"""Parity: ``schedules.from_config("hf", cfg)`` against ``transformers.get_scheduler``.

Every HF schedule is a ``LambdaLR``: the Trainer builds it with ``get_scheduler(name,
optimizer, num_warmup_steps, num_training_steps, scheduler_specific_kwargs)`` and calls
``lr_scheduler.step()`` after each optimizer step, so update k uses
``learning_rate * lambda(k)``. The lambdas are closed forms: rtol=1e-12, atol=1e-12 * lr.
Steps run well past ``num_training_steps`` (cosine rises again there, as in HF).
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

drv.importorskip("torch")
drv.importorskip("transformers")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from npadam import schedules  # noqa: E402

RTOL = 1e-12
SETTINGS = settings(max_examples=drv.examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])

lrs = st.one_of(st.sampled_from([5e-5, 1e-3, 1.0]), st.floats(1e-7, 1.0))
warmups = st.one_of(st.sampled_from([0, 1]), st.integers(0, 60))
totals = st.integers(1, 200)
cycles = st.one_of(st.sampled_from([0.5, 1.0, 2.0]), st.floats(0.1, 3.0))


def check(cfg: dict, steps: int) -> None:
    want = drv.trace_hf(cfg, steps)
    got = schedules.from_config("hf", cfg)
    k = np.arange(steps)
    drv.assert_matches("lr", got.lr(k), want["lr"], rtol=RTOL, peak=cfg["learning_rate"], context=cfg)
    assert got.weight_decay is None and got.beta1 is None and got.beta2 is None
    np.testing.assert_array_equal(want["beta1"], 0.9)


def _steps(data, cfg) -> int:
    horizon = (cfg.get("num_training_steps") or 0) + cfg.get("num_warmup_steps", 0)
    return data.draw(st.integers(1, 2 * horizon + 60))


@st.composite
def hf_config(draw, name):
    cfg = {"lr_scheduler_type": name, "learning_rate": draw(lrs), "num_warmup_steps": draw(warmups),
           "num_training_steps": draw(totals)}
    kw = {}
    if name in ("cosine", "cosine_with_min_lr", "cosine_warmup_with_min_lr") and draw(st.booleans()):
        kw["num_cycles"] = draw(cycles)
    if name == "cosine_with_restarts" and draw(st.booleans()):
        kw["num_cycles"] = draw(st.one_of(st.integers(1, 5), cycles))
    if name == "polynomial":
        kw["lr_end"] = cfg["learning_rate"] * draw(st.sampled_from([0.0, 1e-3, 0.1, 0.999]))
        kw["power"] = draw(st.one_of(st.sampled_from([1.0, 2.0, 0.5]), st.floats(0.1, 4.0)))
        if cfg["num_training_steps"] == cfg["num_warmup_steps"]:  # HF divides by T - W (rejected below)
            cfg["num_training_steps"] += 1
    if name == "inverse_sqrt" and draw(st.booleans()):
        kw["timescale"] = draw(st.integers(1, 500))
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if draw(st.booleans()):
            kw["min_lr"] = cfg["learning_rate"] * draw(st.floats(0.0, 0.5))
        else:
            kw["min_lr_rate"] = draw(st.floats(0.0, 0.5))
    if name == "cosine_warmup_with_min_lr" and draw(st.booleans()):
        kw["warmup_lr_rate"] = draw(st.floats(0.0, 0.5))
    if name == "warmup_stable_decay":
        kw["num_decay_steps"] = draw(st.integers(0, 100))
        kw["warmup_type"] = draw(st.sampled_from(["linear", "cosine", "1-sqrt"]))
        kw["decay_type"] = draw(st.sampled_from(["linear", "cosine", "1-sqrt"]))
        if draw(st.booleans()):
            kw["min_lr_ratio"] = draw(st.floats(0.0, 0.5))
        if draw(st.booleans()):
            kw["num_cycles"] = draw(cycles)
        if draw(st.booleans()):  # num_stable_steps wins over num_training_steps when both are given
            kw["num_stable_steps"] = draw(st.integers(0, 100))
            if draw(st.booleans()):
                del cfg["num_training_steps"]
    if name in ("constant", "constant_with_warmup", "inverse_sqrt") and draw(st.booleans()):
        del cfg["num_training_steps"]  # not needed by these
    if kw:
        cfg["lr_scheduler_kwargs"] = kw
    return cfg


STEP_FUNCTIONS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                  "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay"]


def test_every_step_function_type_is_covered():
    from transformers.trainer_utils import SchedulerType

    not_step_functions = {"reduce_lr_on_plateau", "greedy"}
    assert {t.value for t in SchedulerType} - not_step_functions == set(STEP_FUNCTIONS)


@pytest.mark.parametrize("name", STEP_FUNCTIONS)
@SETTINGS
@given(data=st.data())
def test_random(name, data):
    cfg = data.draw(hf_config(name))
    check(cfg, _steps(data, cfg))


CASES = [
    {"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 10, "num_training_steps": 100},
    {"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 0, "num_training_steps": 1},
    {"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 99, "num_training_steps": 100},
    {"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 150, "num_training_steps": 100},
    {"lr_scheduler_type": "linear", "learning_rate": 1e-3, "num_warmup_steps": 99, "num_training_steps": 100},
    {"lr_scheduler_type": "linear", "learning_rate": 1e-3, "num_warmup_steps": 0, "num_training_steps": 1},
    {"lr_scheduler_type": "cosine_with_restarts", "learning_rate": 1e-3, "num_warmup_steps": 5,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"num_cycles": 3}},
    {"lr_scheduler_type": "polynomial", "learning_rate": 1e-3, "num_warmup_steps": 10, "num_training_steps": 100,
     "lr_scheduler_kwargs": {"lr_end": 1e-5, "power": 2.0}},
    {"lr_scheduler_type": "polynomial", "learning_rate": 1e-3, "num_warmup_steps": 20, "num_training_steps": 10},
    {"lr_scheduler_type": "inverse_sqrt", "learning_rate": 1e-3, "num_warmup_steps": 0},  # timescale 10_000
    {"lr_scheduler_type": "inverse_sqrt", "learning_rate": 1e-3, "num_warmup_steps": 50},  # timescale = W
    {"lr_scheduler_type": "inverse_sqrt", "learning_rate": 1e-3, "num_warmup_steps": 50,
     "lr_scheduler_kwargs": {"timescale": 7}},
    {"lr_scheduler_type": "cosine_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"min_lr": 1e-5}},
    {"lr_scheduler_type": "cosine_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
    {"lr_scheduler_type": "cosine_warmup_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
    {"lr_scheduler_type": "cosine_warmup_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"min_lr": 1e-5, "warmup_lr_rate": 0.01}},
    {"lr_scheduler_type": "cosine_warmup_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 1,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"min_lr": 1e-5, "warmup_lr_rate": 0.01}},
    {"lr_scheduler_type": "cosine_warmup_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 0,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"min_lr": 1e-5}},
    {"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "num_training_steps": 100, "lr_scheduler_kwargs": {"num_decay_steps": 20}},
    {"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "num_training_steps": 25, "lr_scheduler_kwargs": {"num_decay_steps": 20, "min_lr_ratio": 0.1}},  # S < 0
    {"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 10,
     "lr_scheduler_kwargs": {"num_decay_steps": 20, "num_stable_steps": 30, "warmup_type": "1-sqrt",
                             "decay_type": "1-sqrt"}},
    {"lr_scheduler_type": "constant", "learning_rate": 1e-3, "num_warmup_steps": 10},
    {"lr_scheduler_type": "constant_with_warmup", "learning_rate": 1e-3, "num_warmup_steps": 10},
]


def _case_id(c):
    return f"{c['lr_scheduler_type']}-W{c.get('num_warmup_steps')}-T{c.get('num_training_steps')}"


@pytest.mark.parametrize("cfg", CASES, ids=_case_id)
def test_cases(cfg):
    check(cfg, 3 * (cfg.get("num_training_steps") or 100) + cfg["num_warmup_steps"] + 10)


def test_training_arguments_names():
    """TrainingArguments' names: ``warmup_steps`` (int, or a float < 1 meaning a fraction of
    training, rounded up) and ``max_steps``, resolved as ``TrainingArguments.get_warmup_steps``."""
    import types

    from transformers import TrainingArguments

    for warmup in (0, 7, 0.1, 0.05, 0.333):
        # the real method, without building TrainingArguments (that needs accelerate)
        W = TrainingArguments.get_warmup_steps(types.SimpleNamespace(warmup_steps=warmup), 97)
        ours = schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 2e-4,
                                            "warmup_steps": warmup, "max_steps": 97})
        theirs = schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 2e-4,
                                              "num_warmup_steps": W, "num_training_steps": 97})
        k = np.arange(200)
        np.testing.assert_array_equal(ours.lr(k), theirs.lr(k))
        check({"lr_scheduler_type": "cosine", "learning_rate": 2e-4, "num_warmup_steps": W,
               "num_training_steps": 97}, 200)


def test_training_arguments_command_line_forms():
    """transformers 5: ``lr_scheduler_kwargs`` given as a JSON object string is parsed (the
    command-line form); ``warmup_ratio`` is gone (TrainingArguments rejects it), so npadam
    rejects it too and names the replacement."""
    import json

    from transformers import TrainingArguments

    kw = {"num_cycles": 0.25}
    fields = TrainingArguments.__dataclass_fields__
    assert "lr_scheduler_kwargs" in fields and "warmup_ratio" not in fields
    as_text = schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 2e-4, "warmup_steps": 5,
                                           "max_steps": 50, "lr_scheduler_kwargs": json.dumps(kw)})
    as_dict = schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 2e-4, "warmup_steps": 5,
                                           "max_steps": 50, "lr_scheduler_kwargs": kw})
    k = np.arange(80)
    np.testing.assert_array_equal(as_text.lr(k), as_dict.lr(k))
    for bad, match in (('{"num_cycles": ', "not valid JSON"), ("num_cycles=2", "JSON object string")):
        with pytest.raises(ValueError, match=match):
            schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 2e-4, "max_steps": 50,
                                         "lr_scheduler_kwargs": bad})
    with pytest.raises(ValueError, match="warmup_ratio was removed in transformers 5.*warmup_steps=0.1"):
        schedules.from_config("hf", {"lr_scheduler_type": "linear", "learning_rate": 1e-3, "warmup_ratio": 0.1,
                                     "max_steps": 100})


@pytest.mark.parametrize("text", ['{"num_cycles": "0.25"}', '{"num_cycles": "2"}', '{"num_cycles": 0.75}',
                                  '{"power": "3", "lr_end": "1e-7"}', '{"min_lr_rate": "0.1"}'])
def test_string_values_in_the_json_form_are_converted_as_training_arguments_converts_them(text):
    """TrainingArguments turns quoted numbers and "true"/"false" inside the JSON string into numbers
    and bools (transformers' ``_convert_str_dict``; "1e-7" stays a string there, and both refuse it);
    npadam reads the same kwargs, checked through TrainingArguments' own parsing."""
    from transformers import TrainingArguments

    parsed = TrainingArguments(output_dir="unused", report_to=[], lr_scheduler_kwargs=text).lr_scheduler_kwargs
    kind = {"num_cycles": "cosine", "power": "polynomial", "min_lr_rate": "cosine_with_min_lr"}[next(iter(parsed))]
    base = {"lr_scheduler_type": kind, "learning_rate": 1e-3, "warmup_steps": 2, "max_steps": 20}
    k = np.arange(30)
    try:
        want = schedules.from_config("hf", {**base, "lr_scheduler_kwargs": parsed}).lr(k)
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split(":")[-1].strip()[:20]):
            schedules.from_config("hf", {**base, "lr_scheduler_kwargs": text})
        return
    np.testing.assert_array_equal(schedules.from_config("hf", {**base, "lr_scheduler_kwargs": text}).lr(k), want)


@pytest.mark.parametrize("text", ["", " {}", "\n{}"])
def test_strings_training_arguments_keeps_as_strings_are_refused(text):
    """TrainingArguments parses only strings starting with '{'; others stay strings and the Trainer
    then fails building the scheduler: npadam refuses them at once."""
    from transformers import TrainingArguments

    assert TrainingArguments(output_dir="unused", report_to=[], lr_scheduler_kwargs=text).lr_scheduler_kwargs == text
    with pytest.raises(ValueError, match="JSON object string"):
        schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "max_steps": 20,
                                     "lr_scheduler_kwargs": text})


REJECTED = [
    # (config, HF also raises)
    ({"lr_scheduler_type": "polynomial", "learning_rate": 1e-3, "num_warmup_steps": 0, "num_training_steps": 10,
      "lr_scheduler_kwargs": {"lr_end": 1e-3}}, True),                                      # lr_end >= lr
    ({"lr_scheduler_type": "polynomial", "learning_rate": 1e-3, "num_warmup_steps": 0, "num_training_steps": 10,
      "lr_scheduler_kwargs": {"lr_end": 2e-3}}, True),
    ({"lr_scheduler_type": "polynomial", "learning_rate": 1e-3, "num_warmup_steps": 10,
      "num_training_steps": 10}, True),                                      # T == W: divides by zero at step T
    ({"lr_scheduler_type": "cosine_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "num_training_steps": 10, "lr_scheduler_kwargs": {"min_lr": 1e-5, "min_lr_rate": 0.1}}, True),
    ({"lr_scheduler_type": "cosine_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "num_training_steps": 10}, True),                                      # neither min_lr nor min_lr_rate
    ({"lr_scheduler_type": "cosine_warmup_with_min_lr", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "num_training_steps": 10, "lr_scheduler_kwargs": {"min_lr": 1e-5, "min_lr_rate": 0.1}}, True),
    ({"lr_scheduler_type": "linear", "learning_rate": 1e-3, "num_warmup_steps": 0}, True),  # no T
    ({"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 0}, True),
    ({"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "lr_scheduler_kwargs": {"num_decay_steps": 5}}, True),                 # neither T nor num_stable_steps
    ({"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "num_training_steps": 10, "lr_scheduler_kwargs": {"num_decay_steps": 5, "warmup_type": "exp"}}, True),
    ({"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "num_training_steps": 10, "lr_scheduler_kwargs": {"num_decay_steps": 5, "decay_type": "exp"}}, True),
    ({"lr_scheduler_type": "warmup_stable_decay", "learning_rate": 1e-3, "num_warmup_steps": 0,
      "num_training_steps": 10}, True),                                      # num_decay_steps missing
    ({"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 0, "num_training_steps": 10,
      "lr_scheduler_kwargs": {"power": 2.0}}, True),                         # kwarg of another scheduler
    ({"lr_scheduler_type": "no_such_schedule", "learning_rate": 1e-3}, True),
    ({"lr_scheduler_type": "reduce_lr_on_plateau", "learning_rate": 1e-3,
      "lr_scheduler_kwargs": {"factor": 2.0}}, True),                        # torch: factor must be < 1
    ({"lr_scheduler_type": "greedy", "learning_rate": 1e-3}, False),
    ({"lr_scheduler_type": "linear", "learning_rate": 1e-3, "num_warmup_steps": 0, "num_training_steps": 10,
      "num_warmup_step": 3}, False),                                         # misspelled key
]


@pytest.mark.parametrize("cfg,hf_raises", REJECTED, ids=lambda x: str(x)[:80] if isinstance(x, dict) else None)
def test_rejected(cfg, hf_raises):
    with pytest.raises(ValueError):
        schedules.from_config("hf", cfg).lr(np.arange(50))
    if hf_raises:
        assert drv.raises(lambda: drv.trace_hf(cfg, 50)) is not None


@pytest.mark.parametrize("cfg", CASES, ids=_case_id)
def test_far_steps(cfg):
    """HF's lambdas at far-away steps (what ``LambdaLR`` multiplies the lr by), up to 2**40."""
    got = schedules.from_config("hf", cfg)
    with drv.quiet():
        from transformers import get_scheduler

        opt = drv.torch_adam(cfg["learning_rate"])
        sched = get_scheduler(cfg["lr_scheduler_type"], opt, num_warmup_steps=cfg.get("num_warmup_steps", 0),
                              num_training_steps=cfg.get("num_training_steps"),
                              scheduler_specific_kwargs=dict(cfg.get("lr_scheduler_kwargs") or {}))
    (lam,), (base,) = sched.lr_lambdas, sched.base_lrs
    for k in (12_345, 10**6 + 7, 10**9 + 1, 2**40 + 3):
        assert got.lr(k) == pytest.approx(base * lam(k), rel=RTOL, abs=1e-12 * cfg["learning_rate"]), (k, cfg)
