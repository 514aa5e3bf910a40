"""``npadam config``: check a Megatron-style optimizer/scheduler config and show what it means.

Reads the files ``npadam.config.load`` reads (YAML, JSON, TOML; flat or with
``optimizer`` / ``scheduler`` / ``train`` sections) and Megatron argument files
(``.args``/``.txt``, one ``--name value`` per line or all on one line), validates
every field and combination, and prints the optimizer, the loss scaling, Megatron's
derived step counts and a few lr values. ``--json`` prints the configs (fields that
differ from the defaults) and the derived counts as JSON instead.

    npadam config megatron.yaml
    npadam config train.args --json
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from ._config import label_for, load_mapping
from ._errors import CLIError, Parser

HELP = "check a Megatron-style optimizer/scheduler config (YAML, JSON, TOML, argument file) and describe it"


def build_parser() -> Parser:
    p = Parser(prog="npadam config", description=HELP)
    p.add_argument("file", metavar="FILE", help="the config file ('-' reads stdin)")
    p.add_argument("--json", action="store_true", help="print the checked configs and derived counts as JSON")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    label = label_for(None, args.file)
    cfg = load_mapping(args.file, label)
    from .. import config as C

    try:
        opt_cfg, sched_cfg = C.from_mapping(cfg, where=label)
        sset = None
        if sched_cfg is not None:
            sset = sched_cfg.schedules(opt_cfg.lr, opt_cfg.min_lr, opt_cfg.weight_decay)
    except (ValueError, TypeError, ArithmeticError) as exc:
        msg = " ".join(str(exc).split())
        raise CLIError(msg if msg.startswith(label) else f"{label}: {msg}") from None
    out = sys.stdout
    if args.json:
        doc = C.to_dict(opt_cfg, sched_cfg)
        if sched_cfg is not None:
            doc["derived"] = sched_cfg.steps()
        json.dump(doc, out, indent=1, sort_keys=True, default=str)
        out.write("\n")
        return 0
    print(f"{label}: valid", file=out)
    print(C.describe(opt_cfg, sched_cfg), file=out)
    if sset is not None:
        total = sched_cfg.train_iters if sched_cfg.train_iters is not None else sched_cfg.train_samples
        ks = sorted({0, 1, total // 4, total // 2, 3 * total // 4, max(total - 1, 0)})
        print("lr at update k: " + ", ".join(f"{k}: {float(sset.lr(k)):.6g}" for k in ks), file=out)
    return 0
