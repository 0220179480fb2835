"""The learned policy's network: GCN layers over the host graph, four heads.

K MC-dropout passes are one batched forward: node features (K, N, F) share one graph. The
GCN propagation is GCNConv's (normalize=False, weights precomputed by
`features.encode_graph`), done as one sparse-CSR product over all K passes at once; a unit
test checks it equals `GCNConv.forward`. MC-dropout masks come from `torch.rand` with the
caller's generator (much cheaper on CPU than bernoulli_, and replayable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv

from esper.tamiyo.policies.features import GLOBAL_FEATURES, NODE_FEATURES
from esper.tamiyo.policies.mask import ACTIONS, SLOT_ACTIONS


@dataclass(frozen=True)
class NetworkShape:
    """Architecture hyper-parameters, saved with the weights."""

    node_features: int = NODE_FEATURES
    global_features: int = GLOBAL_FEATURES
    vocabulary: int = 0
    # Small on purpose: inference must stay within a few ms on CPU for 100-node graphs.
    hidden: int = 32
    layers: int = 2
    # Dropout rate used in training and for MC-dropout uncertainty at inference.
    dropout: float = 0.1

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def propagate(conv: GCNConv, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    """GCNConv(normalize=False) on (K, N, H) features with a sparse (N, N) adjacency."""
    k, n, _ = h.shape
    z = conv.lin(h)
    out_dim = z.shape[-1]
    flat = z.permute(1, 0, 2).reshape(n, k * out_dim)
    mixed = (adjacency @ flat).reshape(n, k, out_dim).permute(1, 0, 2)
    return mixed + conv.bias if conv.bias is not None else mixed


class PolicyNet(nn.Module):
    def __init__(self, shape: NetworkShape) -> None:
        super().__init__()
        h = shape.hidden
        self.shape = shape
        self.node_in = nn.Linear(shape.node_features, h)
        self.convs = nn.ModuleList(GCNConv(h, h, normalize=False) for _ in range(shape.layers))
        self.global_in = nn.Linear(shape.global_features, h)
        self.action_head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, len(ACTIONS)))
        # Slot logits (one per slot action) and blueprint logits per node, in one layer.
        self.node_head = nn.Linear(2 * h, SLOT_ACTIONS + shape.vocabulary)
        self.value_head = nn.Linear(2 * h, 1)

    def _dropout(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        p = self.shape.dropout
        if self.training:
            return F.dropout(t, p, True)
        if generator is None or p == 0:
            return t
        keep = torch.rand(t.shape, generator=generator) >= p
        return t * keep * (1.0 / (1.0 - p))

    def forward(
        self, x: torch.Tensor, adjacency: torch.Tensor, g: torch.Tensor,
        generator: torch.Generator | None = None, passes: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, F), g (B, G) -> action logits (B', A), slot logits (B', N, 4), blueprint
        logits (B', N, V), value (B',). A generator turns on MC-dropout outside training:
        the (deterministic) graph layers run once, then `passes` dropout samples of the
        embeddings go through the heads together, so B' = B * passes."""
        h = F.relu(self.node_in(x))
        for conv in self.convs:
            h = h + F.relu(propagate(conv, h, adjacency))
        c = h.mean(dim=1) + F.relu(self.global_in(g))  # (B, H)
        if generator is not None and passes > 1 and not self.training:
            h = h.repeat_interleave(passes, dim=0)
            c = c.repeat_interleave(passes, dim=0)
        h, c = self._dropout(h, generator), self._dropout(c, generator)
        pooled = torch.cat([c, h.max(dim=1).values], dim=-1)
        per_node = torch.cat([h, c.unsqueeze(1).expand_as(h)], dim=-1)
        node_out = self.node_head(per_node)
        return (
            self.action_head(pooled),
            node_out[..., :SLOT_ACTIONS],
            node_out[..., SLOT_ACTIONS : SLOT_ACTIONS + self.shape.vocabulary],
            self.value_head(pooled).squeeze(-1),
        )
