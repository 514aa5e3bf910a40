"""A rank that fails or hangs, to check that the launchers never hang a test: ``fail_rank.py raise|hang``.

Under mpiexec it initializes MPI, as a real rank does (``python3 -m mpi4py`` then aborts every rank
when one raises); under torchrun's variables it imports nothing.
"""

import os
import sys
import time

if "PMI_RANK" in os.environ:
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
else:
    rank = int(os.environ["RANK"])
if sys.argv[1] == "raise" and rank == 1:
    raise RuntimeError(f"rank {rank} fails on purpose")
time.sleep(300)
