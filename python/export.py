#!/usr/bin/env python
"""Export a polyget checkpoint for LAMMPS (logic in polyget.export).

    python python/export.py CKPT -o potentials/NAME.pt [--dtype float32|float64] [--device cpu|cuda]

writes NAME.pt (``pair_style mliap unified NAME.pt 0|1``) and NAME.jit.pt (``pair_style polyget``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from polyget.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
