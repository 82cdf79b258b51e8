"""This project's own student: a small MLP with a residual hidden block, for feature vectors.

kdsweep's contract: the config node (conf/model/gbm_student.yaml) holds this class's own arguments
(hidden, blocks); kdsweep adds input_shape and num_classes because the constructor names them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 16, blocks: int = 1) -> None:
        super().__init__()
        self.inp = nn.Linear(math.prod(input_shape), hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.relu(h))
