"""Teacher and student networks. Each takes the data's input shape and class count as arguments."""

from __future__ import annotations

import math

from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MLP(nn.Sequential):
    """Flatten, then `depth` hidden layers of `width` units with ReLU (and optional dropout)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 128,
        depth: int = 1,
        widths: list[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        # `widths` lists layer sizes for the tutorial's tapered teacher (512, 256); else depth x width.
        hidden = list(widths) if widths else [width] * depth
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(size, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            size = h
        layers.append(nn.Linear(size, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Sequential):
    """conv-pool-conv-pool-fc: a teacher clearly stronger than an MLP student of the same data."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        in_channels, height, width = input_shape
        c1, c2 = channels
        super().__init__(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (height // 4) * (width // 4), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
