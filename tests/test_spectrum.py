"""spectrum.py: effective ranks against closed forms."""

import numpy as np

from minc_tf import spectrum


def test_effective_rank():
  np.testing.assert_allclose(spectrum.effective_rank(np.ones(16)), 16.0, rtol=1e-9)
  np.testing.assert_allclose(spectrum.effective_rank([5.0, 0.0, 0.0]), 1.0, rtol=1e-9)
  # A non-flat spectrum: p = (3, 1) / 4, exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548...
  np.testing.assert_allclose(spectrum.effective_rank([3.0, 1.0]), 1.7547654, rtol=1e-6)


def test_feature_effective_rank_is_of_the_singular_values_of_the_centred_features():
  """Features U diag(s) V^T plus a constant offset: the offset is removed by the centring and
  the rank is that of the singular values s (not of their squares, the eigenvalues of the
  covariance, which agree with them only on flat or one-hot spectra)."""
  rng = np.random.default_rng(0)
  n, d, s = 200, 6, np.array([4.0, 2.0, 1.0, 0.5, 0.0, 0.0])
  u, _ = np.linalg.qr(rng.normal(size=(n, d)))
  u -= u.mean(0)  # centred columns, re-orthonormalised
  u, _ = np.linalg.qr(u)
  v, _ = np.linalg.qr(rng.normal(size=(d, d)))
  features = u @ np.diag(s) @ v.T + 5.0 * rng.normal(size=(1, d))
  p = s / s.sum()
  expected = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
  np.testing.assert_allclose(spectrum.feature_effective_rank(features), expected, rtol=1e-6)
  p2 = s ** 2 / (s ** 2).sum()
  assert abs(np.exp(-np.sum(p2[p2 > 0] * np.log(p2[p2 > 0]))) - expected) > 0.3
