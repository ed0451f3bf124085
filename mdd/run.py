"""``python -m mdd.run CONFIG``: ``mdd-run`` as a module, the form ``torchrun`` starts
(``torchrun --nproc_per_node=N -m mdd.run CONFIG``)."""

import sys

from mdd.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
