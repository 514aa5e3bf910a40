"""Checkpoint speed: npadam.checkpoint against torch.save / torch.load of the same optimizer state,
in the same process, with the machine's floor (writing the same bytes with one fsync, and
sha256 of them).

    python3 tools/bench_checkpoint.py [--sizes 16,64] [--dir DIR] [--repeat 3]

Sizes are millions of fp32 params; each save holds master + exp_avg + exp_avg_sq (12 bytes
per param). torch's side: ``torch.optim.AdamW`` over one tensor of the same size,
``torch.save({"param": p, "optimizer": opt.state_dict()})`` (the same bytes) to a file that is
then fsynced (torch does not fsync), and ``torch.load`` + copy + ``load_state_dict``; it checks
nothing and is not atomic, so it is the cheapest a checkpoint can be with torch's own tools. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npadam  # noqa: E402
from npadam import checkpoint as C  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def floor_write(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(memoryview(data).cast("B"))
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,64", help="millions of fp32 params, comma-separated")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory on /work or /tmp)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    root = Path(tempfile.mkdtemp(dir=args.dir or ("/work" if os.path.isdir("/work") else None)))
    print(f"# checkpoint speed, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, directory {root}")
    print()
    print("| params | bytes | floor: write+fsync | floor: sha256 | npadam save | torch.save+fsync | save ratio "
          "| npadam load | torch.load+load_state_dict | load ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for m in (int(x) for x in args.sizes.split(",")):
            n = m << 20
            w = np.zeros(n, np.float32)
            opt = npadam.AdamW({"w": w}, lr=1e-3)
            opt.step({"w": np.ones(n, np.float32)})
            nbytes = 3 * n * 4
            blob = np.ones(3 * n, np.float32)
            t_floor = best(lambda: floor_write(root / "floor.bin", blob), args.repeat)
            t_sha = best(lambda: hashlib.sha256(memoryview(blob).cast("B")).digest(), args.repeat)
            del blob
            ck = root / "ck"
            t_save = best(lambda: C.save(ck, opt), args.repeat)
            t_load = best(lambda: C.load(ck, opt), args.repeat)
            tw = torch.zeros(n, requires_grad=True)
            topt = torch.optim.AdamW([tw], lr=1e-3)
            tw.grad = torch.ones(n)
            topt.step()

            def tsave() -> None:
                torch.save({"param": tw.detach(), "optimizer": topt.state_dict()}, root / "t.pt")
                with open(root / "t.pt", "rb+") as f:
                    os.fsync(f.fileno())

            def tload() -> None:
                sd = torch.load(root / "t.pt", weights_only=True)
                with torch.no_grad():
                    tw.copy_(sd["param"])
                topt.load_state_dict(sd["optimizer"])

            t_tsave = best(tsave, args.repeat)
            t_tload = best(tload, args.repeat)
            gb = nbytes / 1e9
            print(f"| {m}M | {nbytes / 2**20:.0f} MiB | {t_floor:.2f} s ({gb / t_floor:.2f} GB/s) | "
                  f"{t_sha:.2f} s | {t_save:.2f} s ({gb / t_save:.2f} GB/s) | {t_tsave:.2f} s | "
                  f"{t_tsave / t_save:.2f}x | {t_load:.2f} s ({gb / t_load:.2f} GB/s) | {t_tload:.2f} s | "
                  f"{t_tload / t_load:.2f}x |", flush=True)
            del opt, w, topt, tw
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("ratio: torch's time / npadam's (above 1: npadam faster). npadam also checksums every tensor, "
          "validates names, shapes and values, and replaces the old checkpoint atomically.")


if __name__ == "__main__":
    main()
