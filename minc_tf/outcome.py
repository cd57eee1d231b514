"""The registered outcome test (docs/study_preregistration.md), read from an outcome study's rows.

Per arm a and seed s, D_a(s) = L_val(B_small) - L_val(B_large): what the small batch costs in the
validation Spectral objective (evaluate.spectral_objective; lower is better, so D > 0 is a loss).
Against the reference arm r (the first), Delta_a(s) = D_r(s) - D_a(s): positive when arm a loses
less. H1 for arm a is supported when mean Delta > 0, the one-sided paired t-test gives p < alpha
(ALPHA: 0.05 Bonferroni-corrected over the two registered MINC arms) and Delta > 0 on every seed; rejected when mean
Delta <= 0; otherwise inconclusive.
"""

import math

import numpy as np

from minc_tf import labels
from minc_tf.errors import UserError

# The amended primary endpoint (docs/study_outcome.md, "Deviations"): the validation objective
# with the training clip; the registered one, without it, is REGISTERED_ENDPOINT.
ENDPOINT = 'val_objective_clipped'
REGISTERED_ENDPOINT = 'val_objective'
# Registered: two MINC arms tested against Spectral, Bonferroni (0.05 / 2), however many run.
ALPHA = 0.05 / 2


def lowest(scores):
  """The learning rate with the lowest finite endpoint (ties: the lower rate)."""
  finite = {lr: v for lr, v in scores.items()
            if isinstance(v, (int, float)) and np.isfinite(v)}
  if not finite:
    raise UserError(f'Every screened run diverged or has no {ENDPOINT} ({scores}). Fix: lower '
                    'run_study.learning_rates, and bind run.objective_pairs (e.g. 4096).')
  return min(sorted(finite), key=finite.get)


def t_upper_tail(t, df):
  """P(T > t) for Student's t with `df` degrees of freedom. With x = sqrt(df) tan(theta) the
  density becomes c cos(theta)^(df - 1) on a bounded interval, which Simpson's rule integrates
  accurately for every t (no peak to lose at large t)."""
  c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
  theta = np.linspace(math.atan(abs(t) / math.sqrt(df)), math.pi / 2, 20001)
  f = np.cos(theta) ** (df - 1)
  h = theta[1] - theta[0]
  tail = c * h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
  tail = min(max(tail, 0.0), 0.5)
  return tail if t >= 0 else 1.0 - tail


def paired_test(deltas, alpha):
  """{'mean', 'std', 'n', 't', 'p', 'decision'} of one-sided paired differences (H1: mean > 0)."""
  d = np.asarray(deltas, np.float64)
  out = {'n': len(d), 'mean': float(d.mean()) if len(d) else None,
         'std': float(d.std(ddof=1)) if len(d) > 1 else None, 't': None, 'p': None}
  if len(d) < 2:
    out['decision'] = 'not tested (fewer than 2 seeds)'
    return out
  if out['std'] > 0:
    out['t'] = out['mean'] / (out['std'] / math.sqrt(len(d)))
    out['p'] = t_upper_tail(out['t'], len(d) - 1)
  else:
    out['p'] = 0.0 if out['mean'] > 0 else 1.0
  if out['mean'] <= 0:
    out['decision'] = 'rejected'
  elif out['p'] < alpha and (d > 0).all():
    out['decision'] = 'supported'
  else:
    out['decision'] = 'inconclusive'
  return out


def cells(rows):
  """{arm: {batch size: {seed: row}}} of the rows with cell labels, arms in order."""
  out = {}
  for r in rows:
    parsed = labels.parse_cell(r['variant'])
    if parsed:
      out.setdefault(parsed[0], {}).setdefault(parsed[1], {})[r.get('seed')] = r
  return out


def analysis(rows, alpha=ALPHA, endpoint=ENDPOINT):
  """The registered contrasts: {'small', 'large', 'alpha', 'arms': {arm: {'D': {seed: D},
  'test': paired_test of Delta (None for the reference)}}}; None before any arm has both
  batch sizes."""
  by_arm = cells(rows)
  sizes = sorted({b for per in by_arm.values() for b in per})
  if len(sizes) < 2:
    return None
  small, large = sizes[0], sizes[-1]
  reference = next(iter(by_arm))
  corrected = alpha
  out = {'small': small, 'large': large, 'alpha': corrected, 'reference': reference, 'arms': {}}
  for arm, per in by_arm.items():
    seeds = sorted(set(per.get(small, {})) & set(per.get(large, {})))
    out['arms'][arm] = {'D': {s: per[small][s][endpoint] - per[large][s][endpoint]
                              for s in seeds
                              if endpoint in per[small][s] and endpoint in per[large][s]}}
  ref = out['arms'][reference]['D']
  for arm, entry in out['arms'].items():
    if arm == reference:
      entry['test'] = None
      continue
    shared = sorted(set(ref) & set(entry['D']))
    entry['Delta'] = {s: ref[s] - entry['D'][s] for s in shared}
    entry['test'] = paired_test([entry['Delta'][s] for s in shared], corrected)
  return out


def _pm(values, digits=4):
  values = [v for v in values if isinstance(v, (int, float))]
  if not values:
    return '-'
  if len(values) == 1:
    return f'{values[0]:.{digits}f}'
  return f'{np.mean(values):.{digits}f} +- {np.std(values, ddof=1):.{digits}f}'


def lines(rows, alpha=ALPHA):
  """Markdown: the cells (both objectives and the probe, mean +- std over seeds), then the
  test per arm on the amended endpoint and on the registered one; [] before the first cell."""
  by_arm = cells(rows)
  if not by_arm:
    return []
  sizes = sorted({b for per in by_arm.values() for b in per})
  columns = [(ENDPOINT, 'L_val', 4), (REGISTERED_ENDPOINT, 'unclipped', 1), ('probe_top1',
                                                                             'probe', 2)]
  out = ['| arm | lr | ' + ' | '.join(f'{h} B={b}' for _, h, _ in columns for b in sizes) +
         ' |', '|---|---|' + '---|' * (len(columns) * len(sizes))]
  for arm, per in by_arm.items():
    lr = next(labels.parse_cell(r['variant'])[2] for b in per for r in per[b].values())
    cells_ = [_pm([r.get(key) for r in per.get(b, {}).values()], digits) +
              (f" (n={len(per.get(b, {}))})" if key == ENDPOINT else '')
              for key, _, digits in columns for b in sizes]
    out.append(f'| {arm} | {lr:g} | ' + ' | '.join(cells_) + ' |')
  out.append('\nL_val: the validation Spectral objective with the training clip (mu = 10; the '
             'amended primary endpoint, lower is better); unclipped: the registered one; '
             'probe: validation linear-probe top-1 (%); mean +- sample std over the seeds.')
  for endpoint, title in ((ENDPOINT, 'amended endpoint (L_val, clipped)'),
                          (REGISTERED_ENDPOINT, 'registered endpoint (unclipped)')):
    result = analysis(rows, alpha, endpoint)
    if not result:
      continue
    out += [f"\nThe test on the {title}: D = L(B={result['small']}) - L(B={result['large']}) "
            f"per seed; Delta = D({result['reference']}) - D(arm), one-sided paired t-test, "
            f"alpha {result['alpha']:.3g} (Bonferroni):\n",
            '| arm | seeds | D | Delta | t | p | decision |', '|---|---|---|---|---|---|---|']
    for arm, entry in result['arms'].items():
      test = entry['test']
      d = _pm(list(entry['D'].values()))
      if test is None:
        out.append(f"| {arm} (reference) | {len(entry['D'])} | {d} | - | - | - | - |")
        continue
      t = '-' if test['t'] is None else f"{test['t']:.2f}"
      p = '-' if test['p'] is None else f"{test['p']:.3g}"
      out.append(f"| {arm} | {test['n']} | {d} | {_pm(list(entry['Delta'].values()))} | {t} | "
                 f"{p} | {test['decision']} |")
  return out
