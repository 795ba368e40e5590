"""How long PyTorch's OpenMP threads spin before they sleep, in every grpo-math process.

libgomp, the OpenMP runtime of PyTorch's CPU wheels, keeps a thread that has finished its share of
a parallel region spinning for ``GOMP_SPINCOUNT`` turns (300,000 unless ``OMP_WAIT_POLICY`` says
otherwise) before it sleeps. Alone on its cores a process gains from that. Two processes that
compute at once on the same cores (the trainer's update beside the server's sampling with
``--max-staleness 1``; two servers) lose badly: each one's spinning threads hold the cores the
other's threads wait for. 3,000 turns kept the speed of each alone and took most of that loss
away; sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) made the trainer's update much slower
(measured on the performance page, "OpenMP threads on shared cores").

libgomp reads the variable once, when it is loaded (``import torch``), so it is set before that.
A wait policy or spin count the user set wins.
"""

import os

SPIN_COUNT = "3000"


def spin_briefly() -> bool:
    """Set ``GOMP_SPINCOUNT`` for libgomp loaded from now on, here or in a process started from
    here, unless the user chose a wait policy or spin count; True if it was set."""
    if {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
