"""Simic: offline training of Tamiyo's learned (GNN) policy from recorded runs.

- `episodes`: run short real training episodes of the example task and record them;
- `dataset`, `records`, `sources`: the training set (episode files of length-delimited Leyline
  protos, Oona topic dumps, Nissa's history) and the transitions derived from it;
- `reward`: the documented reward;
- `train`: behaviour cloning + IQL over the GNN's heads, saved as a versioned artifact;
- `evaluate`: the learned policy against the heuristic on held-out episodes.

Modules are imported explicitly (they pull in torch and Tolaria).
"""
