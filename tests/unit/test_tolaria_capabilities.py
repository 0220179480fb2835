"""The session's capability tags name the slot kinds it hosts, so Urza offers the
blueprints that require them (conv blueprints need "conv2d")."""

import torch

from esper.tolaria import attach
from esper.tolaria.tasks import SmallCNN


def test_open_message_advertises_the_slot_kinds():
    model = SmallCNN(8)
    session = attach(model, torch.optim.SGD(model.parameters(), lr=0.1), policy="none",
                     example_input=torch.zeros(2, 1, 8, 8))
    try:
        tags = list(session._open_message().capabilities.tags)
    finally:
        session.close()
    assert tags == ["conv2d", "features"]
