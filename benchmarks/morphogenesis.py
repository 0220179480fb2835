#!/usr/bin/env python
"""Does growth pay? Esper's morphogenesis experiment on Fashion-MNIST (issue 13).

Arms, per seed with the same initialisation and data order: the static small host; Esper
with the heuristic at its defaults (`esper.tolaria.attach`); random growth; a fixed growth
schedule; static models of Esper's final size and of its own final architecture (also
stopped at Esper's FLOPs); GroMo growing the same host; a static large reference. Test
accuracy against training FLOPs counted on the passes actually run. The arms, FLOP
accounting, data and reporting live in benchmarks/morpho/.

    .venv/bin/python benchmarks/morphogenesis.py [--seeds 5] [--epochs 20] [--jobs 2] [--hosts mlp,cnn]
        [--arms static-small,esper,...] [--quick] [--out-dir benchmarks/results]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from morpho.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
