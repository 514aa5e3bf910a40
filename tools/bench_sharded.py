"""Sharded optimizer (``comm=``, issue 12): per-rank state memory and step time on 1, 2 and 4 MPI ranks.

    python3 tools/bench_sharded.py                      # 16M fp32 params in 8 tensors, ranks 1 2 4
    python3 tools/bench_sharded.py --elems 4 --ranks 1 2 --repeats 5
    python3 tools/bench_sharded.py --ckpt-dir /work/tmp-ckpt   # also npadam.checkpoint save / load
    python3 tools/bench_sharded.py --device gpu --ranks 1 2 --elems 64   # params on GPU 0, shared by the ranks

With ``--device gpu`` the params and grads are CuPy arrays (torch CUDA tensors for the torch fronts)
on GPU 0, which every rank shares: pip's MPI moves host memory, so the step's collectives are staged
through host copies (docs/DISTRIBUTED.md, "Params on a GPU"); the step time is taken after a device
synchronize.

Each configuration runs under ``mpiexec -n R python3 -m mpi4py tools/bench_sharded.py --rank-run``
with one Numba thread per rank (``NUMBA_NUM_THREADS=1``): every rank builds ``npadam.AdamW`` over
the same params with ``comm=distributed.init("mpi")`` and steps it with its own grads; the
single-process optimizer without ``comm`` (one thread, and all threads) is the baseline. Reported:
the state bytes each rank's engine holds (``master``, ``exp_avg``, ``exp_avg_sq`` arrays and fp8 scales:
array ``nbytes``, not RSS) against the single-process state, and the median step time over
``--repeats`` steps (rank 0's clock, after a barrier). On a machine with fewer cores than ranks the
ranks share cores, so the step time shows the cost of the collectives and the padding, not a
speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "m_scale", "v_scale", "vmax_scale")


def state_nbytes(opt) -> int:
    return sum(getattr(b, f).nbytes for b in opt._engine.bufs for f in FIELDS if getattr(b, f) is not None)


def params(elems: int) -> list[np.ndarray]:
    sizes = [elems // 8 + 17 * i for i in range(8)]  # uneven tensors: alignment padding inside the buffer
    return [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)]


def timed(fn, comm, sync=lambda: None) -> float:
    """Seconds of ``fn()`` on this rank's clock, between barriers (every rank starts and ends together);
    ``sync`` waits for the device (GPU params) before each clock reading."""
    if comm is not None:
        comm.barrier()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    if comm is not None:
        comm.barrier()
    return time.perf_counter() - t


def rank_run(elems: int, repeats: int, comm_name: str, ckpt_dir: str = "", front: str = "numpy",
             device: str = "cpu") -> None:
    """``front``: "numpy" (``npadam.AdamW`` on arrays), "torch-flat" (``npadam.torch.AdamW`` with
    ``flat_storage=True``: the collectives run on the flat buffers), "torch-flat-copy" (the same with
    the flat buffers not handed to the communicator: grads packed, params gathered and copied, as
    for params that are not flat)."""
    import npadam
    from npadam import distributed

    comm = distributed.init(comm_name) if comm_name != "none" else None
    ps = params(elems)
    rank = comm.rank if comm is not None else 0
    grads = [np.random.default_rng(100 + rank).standard_normal(p.size).astype(np.float32) for p in ps]
    sync = lambda: None  # noqa: E731
    if device == "gpu":
        import cupy

        sync = cupy.cuda.Device(0).synchronize
        if front == "numpy":
            ps, grads = [cupy.asarray(p) for p in ps], [cupy.asarray(g) for g in grads]
    if front == "numpy":
        opt = npadam.AdamW(ps, lr=1e-4, max_grad_norm=1.0, comm=comm)
        step = lambda: opt.step(grads)  # noqa: E731
    else:
        import torch

        import npadam.torch as nt

        tp = [torch.nn.Parameter(torch.from_numpy(p).to("cuda:0" if device == "gpu" else "cpu")) for p in ps]
        opt = nt.AdamW(tp, lr=1e-4, max_grad_norm=1.0, comm=comm, flat_storage=True)
        for p, g in zip(tp, grads):
            p.grad.copy_(torch.from_numpy(g).to(p.device))
        if front == "torch-flat-copy" and comm is not None:
            opt._sharding.flat.clear()
        step = opt.step
    step()  # compiles / warms
    times = [timed(step, comm, sync) for _ in range(repeats)]
    out = {"rank": rank, "world": comm.size if comm is not None else 1, "state_bytes": state_nbytes(opt),
           "step_ms": float(np.median(times) * 1e3), "elems": sum(int(p.size) for p in ps),
           "staged": bool(opt._sharding.mem.staged) if comm is not None else False}
    if ckpt_dir and front == "numpy" and device == "cpu":  # a checkpoint of this optimizer, then loaded into a fresh one (best of two, rank 0's clock)
        from npadam import checkpoint

        path = os.path.join(ckpt_dir, "ckpt")
        fresh = npadam.AdamW([np.zeros_like(p) for p in ps], lr=1e-4, max_grad_norm=1.0, comm=comm)
        for key, fn in (("save_s", lambda: checkpoint.save(path, opt)), ("load_s", lambda: checkpoint.load(path, fresh))):
            out[key] = min(timed(fn, comm) for _ in range(2))
        out["ckpt_bytes"] = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    if comm is not None:
        everyone = comm.allgather_object(out)
        if rank == 0:
            print("RESULT " + json.dumps(everyone), flush=True)
    else:
        print("RESULT " + json.dumps([out]), flush=True)


def launch(ranks: int, elems: int, repeats: int, threads: int, ckpt_dir: str = "", front: str = "numpy",
           device: str = "cpu") -> list[dict]:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    me = [sys.executable, "-m", "mpi4py", __file__] if ranks else [sys.executable, __file__]
    args = ["--rank-run", "--elems", repr(elems / (1 << 20)), "--repeats", str(repeats), "--comm", "mpi" if ranks else "none"]
    if ckpt_dir:
        args += ["--ckpt-dir", ckpt_dir]
    args += ["--front", front, "--device", device]
    cmd = ([str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] if ranks else []) + me + args
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elems", type=float, default=16, help="millions of fp32 params (default 16)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--comm", default="mpi", help=argparse.SUPPRESS)
    ap.add_argument("--front", default="numpy", choices=["numpy", "torch-flat", "torch-flat-copy"],
                    help="numpy: npadam.AdamW on arrays; torch-flat: npadam.torch.AdamW(flat_storage=True), whose "
                    "collectives run on the flat buffers; torch-flat-copy: the same through the packing copies")
    ap.add_argument("--ckpt-dir", default="", help="also time npadam.checkpoint save and load into this directory "
                    "(a checkpoint of the whole state per configuration; host params only)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                    help="where the params live (gpu: GPU 0, shared by the ranks; collectives staged through the host)")
    a = ap.parse_args()
    elems = int(a.elems * (1 << 20))
    if a.rank_run:
        rank_run(elems, a.repeats, a.comm, a.ckpt_dir, a.front, a.device)
        return
    cores = os.cpu_count()
    print(f"# npadam sharded AdamW ({a.front}, params on {a.device}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{cores} cores, {elems:,} fp32 params in 8 tensors, max_grad_norm=1, median of {a.repeats} steps")
    ck = a.ckpt_dir if a.front == "numpy" and a.device == "cpu" else ""
    base1 = launch(0, elems, a.repeats, 1, ck, a.front, a.device)[0]
    baseall = launch(0, elems, a.repeats, cores, "", a.front, a.device)[0]
    extra = " checkpoint save s | load s |" if ck else ""
    print(f"\n| run | ranks x threads | state bytes per rank | / one process | step ms |{extra}")
    print("|---|---|---|---|---|" + ("---|---|" if ck else ""))

    def times(row: dict) -> str:
        return f" {row['save_s']:.2f} | {row['load_s']:.2f} |" if ck else ""

    print(f"| no comm | 1 x 1 | {base1['state_bytes']:,} | 1.000 | {base1['step_ms']:.1f} |{times(base1)}")
    print(f"| no comm | 1 x {cores} | {baseall['state_bytes']:,} | 1.000 | {baseall['step_ms']:.1f} |"
          + (" | |" if ck else ""))
    for r in a.ranks:
        rows = launch(r, elems, a.repeats, 1, ck, a.front, a.device)
        per = max(x["state_bytes"] for x in rows)
        step = rows[0]["step_ms"]
        how = "comm=mpi, staged" if rows[0]["staged"] else "comm=mpi"
        print(f"| {how} | {r} x 1 | {per:,} (max over ranks) | {per / base1['state_bytes']:.3f} | {step:.1f} |"
              f"{times(rows[0])}")


if __name__ == "__main__":
    main()
