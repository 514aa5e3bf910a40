"""A user's JAX loop with ``npadam.AdamW(comm=)`` on 2 MPI ranks (tests/test_sharded.py).

Params are a flat dict of JAX arrays (read-only producers: each step's new params come back in
``info.params``, the same dict), grads from ``jax.grad`` on each rank's own batch, clipping on.
The reference is one process stepped on the average as MPI makes it (the float32 sum of the two
ranks' grads, which does not depend on the order, divided by 2): params and norms bit for bit.
Prints ``OK jax-sharded rank r/n <steps>``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import npadam
from npadam import distributed

try:
    from . import launch
except ImportError:  # run as a script
    import launch


def loss(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


def run(comm) -> int:
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (300, 200)), "b": jnp.zeros((200,))}
    opt = npadam.AdamW(params, lr=1e-2, weight_decay=0.1, max_grad_norm=0.02, comm=comm)
    ref = npadam.AdamW(dict(params), lr=1e-2, weight_decay=0.1, max_grad_norm=0.02)
    rp = params
    steps = 3
    for k in range(steps):
        xs = [jax.random.normal(jax.random.PRNGKey(10 * k + r), (8, 300)) for r in range(comm.size)]
        info = opt.step(jax.grad(loss)(params, xs[comm.rank]))
        params = info.params
        every = [jax.grad(loss)(rp, x) for x in xs]
        avg = {n: np.sum([np.asarray(g[n]) for g in every], axis=0, dtype=np.float32) / np.float32(comm.size)
               for n in rp}
        rinfo = ref.step(avg)
        rp = rinfo.params
        assert info.grad_norm == rinfo.grad_norm and info.grad_norm > 0.02, (k, info.grad_norm, rinfo.grad_norm)
        assert isinstance(params, dict) and list(params) == ["w", "b"], type(params)
        for n in params:
            assert np.array_equal(np.asarray(params[n]), np.asarray(rp[n])), (k, n)
        loss(params, xs[comm.rank])  # the dict feeds the next forward
    return steps


def main() -> None:
    comm = distributed.init("mpi")
    launch.rank_main(comm, "jax-sharded", lambda: run(comm))


if __name__ == "__main__":
    main()
