"""``torchrun`` for the recipes: one process per GPU, with the requeue contract kept.

    python -m speechdistill.bin.torchrun --standalone --nproc_per_node 4 \
        -m speechdistill.bin.distill_train --config conf/distilhubert.yaml ...

Takes torchrun's options unchanged. SIGTERM and SIGUSR1 are passed to every rank (which
checkpoints and exits 99), and the status is 99 when the ranks stopped that way, so queue.pl and
slurm.pl resubmit the job; plain torchrun exits 1 there (or dies on SIGUSR1 and orphans the
ranks). See :mod:`speechdistill.launch.ranks`.
"""
from __future__ import annotations

import sys

from speechdistill.launch.ranks import main

if __name__ == "__main__":
    sys.exit(main())
