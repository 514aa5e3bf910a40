"""``npadam config``: check a Megatron-style optimizer/scheduler config and show what it means.

Reads the files ``npadam.config.load`` reads (YAML, JSON, TOML; flat or with
``optimizer`` / ``scheduler`` / ``train`` sections) and Megatron argument files
(``.args``/``.txt``, one ``--name value`` per line or all on one line), validates
every field and combination, and prints the optimizer, the loss scaling, Megatron's
derived step counts (``train_iters`` included, batch-size ramp-up counted) and a few lr
values, per group when ``decoupled_lr`` gives the embedding/output params their own
(``lr[0]`` default, ``lr[1]`` decoupled). ``--json`` prints the configs (fields that
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
            sset = C.schedules_for(opt_cfg, sched_cfg)
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
        total = sched_cfg.steps()["train_iters"]
        ks = sorted({0, 1, total // 4, total // 2, 3 * total // 4, max(total - 1, 0)})
        for name, s in sset.items():
            if name.startswith("lr"):
                print(f"{name} at update k: " + ", ".join(f"{k}: {float(s(k)):.6g}" for k in ks), file=out)
    return 0
