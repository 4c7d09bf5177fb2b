"""Local training only, the baseline personalisation is measured against: every device trains its
own model from its own last weights (every weight personal: fedsim.pipeline.personal), sends nothing,
and the server's model never changes."""

from __future__ import annotations

from fedsim.strategies.fedavg import FedAvg


class Local(FedAvg):
    name = "local"
    personal_layers = "*"
