"""outcome.py: the registered test's statistics against closed forms, and its decision rule."""

import math

import pytest

from minc_tf import labels
from minc_tf import outcome
from minc_tf.errors import UserError


@pytest.mark.parametrize('t', [-3.0, -0.4, 0.0, 0.7, 2.5, 9.0, 1e3, 5e4, 1e9])
def test_t_tail_matches_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
  # df = 1: Cauchy, P(T > t) = 1/2 - atan(t)/pi; df = 2: 1/2 - t / (2 sqrt(2 + t^2)).
  assert outcome.t_upper_tail(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-7)
  df2 = 0.5 - t / (2 * math.sqrt(2 + t * t))
  assert outcome.t_upper_tail(t, 2) == pytest.approx(df2, abs=1e-7, rel=1e-4)
  assert 0.0 <= outcome.t_upper_tail(t, 5) <= 1.0


def test_the_decision_rule_needs_significance_and_every_seed_positive():
  # t = mean / (std / sqrt 3); [1.0, 1.1, 0.9]: t = 17.3, p(df 2) = 0.0017 < 0.025.
  supported = outcome.paired_test([1.0, 1.1, 0.9], outcome.ALPHA)
  assert supported['decision'] == 'supported'
  assert supported['t'] == pytest.approx(1.0 / (0.1 / math.sqrt(3)))
  assert supported['p'] == pytest.approx(0.5 - supported['t'] / (
      2 * math.sqrt(2 + supported['t'] ** 2)), abs=1e-7)
  assert outcome.paired_test([-0.1, -0.2, 0.05], outcome.ALPHA)['decision'] == 'rejected'
  # Positive mean, not significant: inconclusive.
  assert outcome.paired_test([1.0, 0.5, -0.4], outcome.ALPHA)['decision'] == 'inconclusive'
  # Significant at 0.05, not at the registered Bonferroni 0.025: t = 0.8 / (0.4 / sqrt 3).
  weak = [1.2, 0.8, 0.4]
  assert 0.025 < outcome.paired_test(weak, 0.05)['p'] < 0.05
  assert outcome.paired_test(weak, 0.05)['decision'] == 'supported'
  assert outcome.paired_test(weak, outcome.ALPHA)['decision'] == 'inconclusive'
  assert outcome.paired_test([2.0], outcome.ALPHA)['decision'].startswith('not tested')


def _row(arm, b, lr, seed, value, probe=70.0):
  # The registered (unclipped) endpoint: the opposite contrast, so a mix-up shows.
  return {'variant': labels.cell_label(arm, b, lr), 'seed': seed, outcome.ENDPOINT: value,
          outcome.REGISTERED_ENDPOINT: -value, 'probe_top1': probe}


def test_analysis_pairs_the_contrast_by_seed_against_the_first_arm():
  rows = []
  for s in range(3):
    rows += [_row('Spectral', 16, 1e-3, s, 2.0 + s), _row('Spectral', 256, 1e-3, s, 1.0),
             _row('MINC', 16, 2e-3, s, 1.5 + s + 0.1 * s), _row('MINC', 256, 2e-3, s, 1.2),
             _row('MINC', 64, 2e-3, s, 9.9)]  # the middle cell is not in the contrast
  rows.append(_row('MINC', 16, 2e-3, 7, 0.0))  # a seed the reference lacks: not paired
  result = outcome.analysis(rows)
  assert (result['small'], result['large'], result['reference']) == (16, 256, 'Spectral')
  assert result['arms']['Spectral']['D'] == {s: pytest.approx(1.0 + s) for s in range(3)}
  minc = result['arms']['MINC']
  assert minc['D'] == {s: pytest.approx(0.3 + 1.1 * s) for s in range(3)}
  assert minc['Delta'] == {s: pytest.approx(0.7 - 0.1 * s) for s in range(3)}
  assert minc['test']['n'] == 3 and minc['test']['decision'] == 'supported'
  registered = outcome.analysis(rows, endpoint=outcome.REGISTERED_ENDPOINT)
  assert registered['arms']['MINC']['test']['decision'] == 'rejected'
  text = '\n'.join(outcome.lines(rows))
  assert '| MINC | 3 |' in text and 'L_val B=64' in text
  amended, registered_text = text.split('registered endpoint')
  assert 'supported' in amended and 'rejected' in registered_text
  assert outcome.analysis(rows[:2]) is not None and outcome.analysis([rows[0]]) is None


def test_the_screen_picks_the_lowest_objective_and_the_lower_rate_on_ties():
  assert outcome.lowest({1e-3: 0.5, 2e-3: 0.4, 4e-3: float('nan')}) == 2e-3
  assert outcome.lowest({2e-3: 0.4, 1e-3: 0.4}) == 1e-3
  with pytest.raises(UserError, match='run.objective_pairs'):
    outcome.lowest({1e-3: None, 2e-3: float('inf')})
