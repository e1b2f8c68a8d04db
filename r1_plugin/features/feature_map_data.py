"""The feature map's data types (what the embedding, the PNG and the HTML writers share), apart from the maths
so the writers need not import the embedding module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from r1_plugin.errors import R1PluginError

KnnMethod = Literal["auto", "exact", "nndescent"]


class FeatureMapError(R1PluginError, ValueError):
    """Bad input to the feature map: no decoder, wrong shapes, unknown statistics or colour modes."""


@dataclass(frozen=True)
class MapParams:
    """Everything the 2-D embedding depends on besides the decoder weights (part of the cache key)."""

    seed: int = 0
    n_neighbors: int = 15
    min_dist: float = 0.1
    pca_dims: int | Literal["auto"] | None = "auto"  # None: every dimension; "auto": see `projection_dims`
    knn: KnnMethod = "auto"
    n_epochs: int | None = None  # None: UMAP's default (500 below 10,000 points, else 200)

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise FeatureMapError(f"n_neighbors must be >= 2, got {self.n_neighbors}")
        if self.pca_dims != "auto" and self.pca_dims is not None and (
            not isinstance(self.pca_dims, int) or self.pca_dims < 2
        ):
            raise FeatureMapError(f"pca_dims must be an int >= 2, 'auto' or None, got {self.pca_dims!r}")
        if self.knn not in ("auto", "exact", "nndescent"):
            raise FeatureMapError(f"knn must be 'auto', 'exact' or 'nndescent', got {self.knn!r}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise FeatureMapError(f"min_dist must be in [0, 1], got {self.min_dist}")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise FeatureMapError(f"n_epochs must be positive or None, got {self.n_epochs}")


@dataclass
class Embedding:
    """2-D coordinates of every feature and how they were made."""

    coords: np.ndarray  # [d_sae, 2] float32
    weights_sha256: str
    params: MapParams
    cache_path: Path | None = None
    cache_hit: bool = False
    explained: float | None = None  # share of the unit rows' squared norm the projection keeps
    seconds: float = 0.0


@dataclass
class FeatureMap:
    """Everything the PNG and the HTML show: positions, labels, scores, statistics, top examples."""

    title: str
    coords: np.ndarray  # [d_sae, 2]
    labels: list[str | None]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # label scores (quality, interestingness), NaN = none
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # numeric per-feature statistics, NaN = none
    groups: dict[str, list[str | None]] = field(default_factory=dict)  # categorical per-feature values
    examples: dict[int, list[Any]] = field(default_factory=dict)  # feature id -> [Example], strongest first
    embedding: Embedding | None = None

    @property
    def n_features(self) -> int:
        """d_sae: one point per decoder row."""
        return int(self.coords.shape[0])

    def color_modes(self) -> list[str]:
        """Names the map can be coloured by: label scores, statistics, categorical groups."""
        return [*self.scores, *self.stats, *self.groups]
