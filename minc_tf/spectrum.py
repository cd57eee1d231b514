"""Effective ranks of spectra (NumPy, host side): of features (RankMe) and of a method's state."""

import numpy as np


def effective_rank(eigenvalues):
  """exp(entropy) of the normalised spectrum (Roy & Vetterli 2007); k for a flat spectrum."""
  p = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
  p = p / max(p.sum(), 1e-12)
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def feature_effective_rank(features):
  """Effective rank of a [n, d] feature matrix: of the singular values of the centred matrix
  (RankMe, Garrido et al. 2023). Not the eigenvalues of the covariance (their squares); the
  MINC summary's rank, `summary/eigenvalue_effective_rank`, is of its eigenvalues."""
  f = np.asarray(features, np.float64)
  return effective_rank(np.linalg.svd(f - f.mean(0, keepdims=True), compute_uv=False))
