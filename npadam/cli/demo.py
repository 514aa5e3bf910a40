"""``npadam demo``: a placeholder until the end-to-end demo lands.

For now it draws a default warmup-cosine schedule in the terminal, with its
summary. Extra arguments are passed on to ``npadam schedule`` (for example
``--width 100 --height 30`` or ``--plot demo.png``).
"""

from __future__ import annotations

from typing import Sequence

HELP = "a short demo (for now: a warmup-cosine schedule plotted in the terminal)"

DEFAULT = ["warmup-cosine", "--peak", "3e-4", "--warmup-steps", "2000", "--total-steps", "100000",
           "--final", "3e-5"]


def main(argv: Sequence[str]) -> int:
    from .schedule import main as schedule_main

    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print("usage: npadam demo [npadam schedule options]\n\n" + __doc__.strip())
        return 0
    print("npadam demo: the end-to-end training demo is not there yet; here is the schedule it will use:\n"
          "  npadam schedule " + " ".join(DEFAULT) + "\n", flush=True)
    if "--plot" not in argv:
        argv += ["--plot", "terminal"]
    if "--summary" not in argv and "--no-summary" not in argv:
        argv += ["--summary"]
    return schedule_main(DEFAULT + argv)
