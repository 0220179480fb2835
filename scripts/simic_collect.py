#!/usr/bin/env python
"""Produce a Simic training set: short real training episodes of the built-in digits task
under the heuristic with randomized thresholds and epsilon-exploration, every snapshot,
decision, ack and field report recorded (same as `esper tamiyo collect`).

    .venv/bin/python scripts/simic_collect.py --episodes 20 --out data/simic
"""

from __future__ import annotations

import sys

from esper.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["tamiyo", "collect", *sys.argv[1:]]))
