"""2-D toy data sets for the playground, drawn from a torch generator, and how far points lie from a data set.

Every set is scaled to roughly zero mean and unit standard deviation per axis, the scale of the N(0, I) the forward
process ends in, so one view box (±LIMIT) shows data, noise and everything in between.
"""
from __future__ import annotations

import math

import torch

DATASETS = ("swiss roll", "two moons", "8 gaussians", "checkerboard")
DEFAULT_DATASET = "swiss roll"
LIMIT = 3.5  # the views show [-LIMIT, LIMIT]² (N(0, I) puts 99.9 % of points inside)
REFERENCE_POINTS = 20_000  # a dense sample standing in for the data manifold when measuring distances


def sample(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n×2`` float32 points of data set ``name`` (one of :data:`DATASETS`)."""
    draw = {"swiss roll": swiss_roll, "two moons": two_moons, "8 gaussians": eight_gaussians,
            "checkerboard": checkerboard}[name]
    return draw(n, generator)


def swiss_roll(n: int, generator: torch.Generator) -> torch.Tensor:
    """The 2-D swiss roll of Sohl-Dickstein et al. (2015): θ·(cos θ, sin θ), θ ∈ [1.5π, 4.5π], thin noise.

    Neighbouring arms lie 2π/7 ≈ 0.9 apart after scaling; the noise across an arm has std 0.03."""
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    points = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 7.0
    points = points - torch.tensor([0.28, 0.0])  # the roll's centre of mass sits right of its axis
    return points + 0.03 * torch.randn(n, 2, generator=generator)


def two_moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), noise std 0.05 before scaling."""
    angle = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x - 0.5, y - 0.25], dim=1) + 0.05 * torch.randn(n, 2, generator=generator)
    return points * torch.tensor([1.15, 2.0])


def eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """Eight small Gaussians (std 0.1) evenly spaced on a circle of radius √2."""
    k = torch.randint(0, 8, (n,), generator=generator).float()
    centres = math.sqrt(2) * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return centres + 0.1 * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform points on the black squares of a 4×4 board (the FFJORD toy set), scaled to side 3.6."""
    x = 4 * torch.rand(n, generator=generator) - 2
    y = torch.rand(n, generator=generator) - 2 * torch.randint(0, 2, (n,), generator=generator)
    y = y + torch.floor(x) % 2
    return torch.stack([x, y], dim=1) * 0.9


def mean_distance(points: torch.Tensor, reference: torch.Tensor, chunk: int = 512) -> float:
    """Mean over ``points`` (``N×2``) of the Euclidean distance to the nearest of ``reference`` (``M×2``)."""
    nearest = [torch.cdist(part, reference).min(dim=1).values for part in points.split(chunk)]
    return float(torch.cat(nearest).mean())
