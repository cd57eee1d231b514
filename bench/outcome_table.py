"""The outcome study's tables (docs/study_outcome.md), regenerated from its raw records.

  python bench/outcome_table.py                                  # from docs/study_outcome/
  python bench/outcome_table.py --collect=/tmp/outcome          # first copy a study dir's records in

Each run of the study (python -m minc_tf.main --mode=study --gin_file=gin/study_outcome.gin
--model_dir=/tmp/outcome) leaves runs/<hash>/seed<s>/study_run_<digest>.json (its configuration,
bindings and results row) and results.json; --collect copies both into
docs/study_outcome/runs/, the raw records this script reads (and from which a later session
resumes: copy docs/study_outcome/runs into a study dir and rerun the study there).
"""

import argparse
import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minc_tf import labels  # noqa: E402
from minc_tf import outcome  # noqa: E402

RECORDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                       'study_outcome')


def collect(study_dir, records=RECORDS):
  """Copies every finished run's study_run_*.json and results.json under records/runs/."""
  copied = 0
  for path in glob.glob(os.path.join(study_dir, 'runs', '*', 'seed*', 'study_run_*.json')):
    rel = os.path.relpath(os.path.dirname(path), study_dir)
    os.makedirs(os.path.join(records, rel), exist_ok=True)
    for name in (os.path.basename(path), 'results.json'):
      src = os.path.join(os.path.dirname(path), name)
      if os.path.exists(src):
        shutil.copy(src, os.path.join(records, rel, name))
    copied += 1
  return copied


def rows(records=RECORDS):
  """Every record's row (its variant label and seed), newest record per run and label."""
  out = {}
  for path in sorted(glob.glob(os.path.join(records, 'runs', '*', 'seed*', 'study_run_*.json'))):
    with open(path) as f:
      row = json.load(f)['row']
    row['run'] = os.path.relpath(os.path.dirname(path), records)
    out[(row['run'], row['variant'])] = row
  return list(out.values())


def screen_lines(all_rows):
  """The screen: each arm's endpoints per learning rate (B = 64, seed 0)."""
  screen = {}
  for r in all_rows:
    parsed = labels.parse_screen(r['variant'])
    if parsed:
      screen.setdefault(parsed[0], {})[parsed[1]] = r
  if not screen:
    return []
  out = ['| arm | lr | L_val (clipped; amended endpoint) | unclipped (registered) | '
         'validation probe | kNN | final training loss |', '|---|---|---|---|---|---|---|']
  for arm, by_lr in screen.items():
    for lr in sorted(by_lr):
      r = by_lr[lr]
      clipped = r.get(outcome.ENDPOINT)
      out.append(f"| {arm} | {lr:g} | {'-' if clipped is None else f'{clipped:.4f}'} | "
                 f"{r.get(outcome.REGISTERED_ENDPOINT, float('nan')):.1f} | "
                 f"{r.get('probe_top1', float('nan')):.2f} | {r.get('knn_top1', float('nan')):.2f} | "
                 f"{r.get('final_loss', float('nan')):.4f} |")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--collect', help='a study dir whose records to copy in first')
  parser.add_argument('--records', default=RECORDS)
  args = parser.parse_args()
  if args.collect:
    print(f'copied {collect(args.collect, args.records)} run records', file=sys.stderr)
  all_rows = rows(args.records)
  print('## The screen (B = 64, seed 0)\n')
  print('\n'.join(screen_lines(all_rows)))
  cells = outcome.lines(all_rows)
  print('\n## The cells\n')
  print('\n'.join(cells) if cells else '(no cell has run yet)')


if __name__ == '__main__':
  main()
