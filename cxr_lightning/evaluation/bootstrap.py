"""Patient-level cluster bootstrap: resample subjects (not images), seeded and vectorised.

Images of one patient are correlated, so a resample draws ``K`` of the ``K`` patients with
replacement and keeps all images of each drawn patient, as often as it was drawn. One resample
is therefore an integer count per patient; ``B`` resamples are a ``(B, K)`` count matrix, and
every additive statistic of all resamples is one matrix product of those counts with per-patient
sums (:func:`cluster_sums`). Confidence intervals are percentile intervals of the replicates.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import sparse

log = logging.getLogger(__name__)

N_BOOTSTRAP = 2000
CI_LEVEL = 0.95


@dataclass(frozen=True)
class ClusterBootstrap:
    """The resampled patients of one set of images."""

    codes: np.ndarray
    """(n,) index of each image's patient (cluster), 0..K-1."""
    counts: np.ndarray
    """(B, K) how often each patient is drawn in each resample (each row sums to K)."""

    @property
    def n_clusters(self) -> int:
        """Number of patients (clusters) K."""
        return self.counts.shape[1]

    def subset(self, rows: np.ndarray) -> ClusterBootstrap:
        """The same resamples restricted to some images (e.g. those with a finding's label)."""
        return ClusterBootstrap(codes=self.codes[rows], counts=self.counts)


def cluster_bootstrap(clusters: ArrayLike, n_bootstrap: int = N_BOOTSTRAP,
                      seed: int = 0) -> ClusterBootstrap:
    """Draw ``n_bootstrap`` resamples of the clusters (patients) of ``clusters`` (one id per
    image), seeded. An image-level (naive) bootstrap is ``cluster_bootstrap(np.arange(n))``."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(clusters)), use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(f"{int((codes < 0).sum())} images have no subject_id: the patient-level "
                         "bootstrap needs every image's patient (fill subject_id)")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    n_clusters = len(uniques)
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_bootstrap, n_clusters))
    offsets = (np.arange(n_bootstrap) * n_clusters)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n_clusters)
    return ClusterBootstrap(codes=codes.astype(np.int64),
                            counts=counts.reshape(n_bootstrap, n_clusters).astype(np.float64))


def cluster_sums(codes: np.ndarray, values: np.ndarray, n_clusters: int) -> np.ndarray:
    """(K, m) per-cluster sums of the columns of ``values`` (n, m) over the images."""
    membership = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                                   shape=(n_clusters, len(codes)))
    return np.asarray(membership @ np.asarray(values, dtype=np.float64).reshape(len(codes), -1))


def resampled_sums(bootstrap: ClusterBootstrap, values: np.ndarray) -> np.ndarray:
    """(B, m) column sums of ``values`` (n, m) in every resample (images weighted by how often
    their patient was drawn)."""
    return bootstrap.counts @ cluster_sums(bootstrap.codes, values, bootstrap.n_clusters)


def percentile_interval(replicates: np.ndarray, level: float = CI_LEVEL, name: str = "metric",
                        undefined: dict[str, float] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 of bootstrap replicates (B, ...).

    Replicates where the metric is undefined (NaN: e.g. a resample without positives) are left
    out; all-undefined gives NaN. When more than 1% (but not all) are undefined, the share is
    recorded under ``name`` in ``undefined`` if given, else logged as a warning.
    """
    replicates = np.asarray(replicates, dtype=np.float64)
    share = float(np.max(np.isnan(replicates).mean(axis=0)))
    if 0.01 < share < 1:
        if undefined is None:
            log.warning("%s: undefined in up to %.1f%% of the bootstrap resamples; its interval "
                        "comes from the others", name, 100 * share)
        else:
            undefined[name] = share
    tail = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        low, high = np.nanquantile(replicates, [tail, 1 - tail], axis=0)
    return low, high
