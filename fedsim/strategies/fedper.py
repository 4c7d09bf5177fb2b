"""FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"): FedAvg on the
shared base, each device's head its own (partial sharing: fedsim.pipeline.personal, --personal-layers,
here `head` unless given)."""

from __future__ import annotations

from fedsim.strategies.fedavg import FedAvg


class FedPer(FedAvg):
    name = "fedper"
    personal_layers = "head"
