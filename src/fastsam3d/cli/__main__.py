"""``python -m fastsam3d.cli``: the same as the ``fastsam3d`` command (torchrun needs a module)."""

import sys

from . import main

sys.exit(main())
