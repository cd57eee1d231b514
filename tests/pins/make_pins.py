"""Writes the golden pins under tests/pins/ from the code checked out now.

  python tests/pins/make_pins.py            (from the repository root)

Run it once, on the code whose behaviour is to be preserved, and commit what it writes; after
that tests/test_pins.py checks every later version against these files. Rerun it only to pin a
deliberate change of behaviour, and say so in the commit.

What is pinned (tests/test_pins.py says how each is compared):
  methods.npz        every variable of a tiny model of each method (and MINC's variants) after
                     two seeded fit() steps on fixed data, and each one's loss at its start;
  views.npz          the first pretraining batch of a seeded in-memory dataset (host views), and
                     the accelerator's views of the same crops (augment.batch_views), seed 0;
  checkpoints/       tf.train checkpoints of a tiny MINC model (EMA target, summary decay 0.99)
                     and a tiny BYOL model after two steps, as the Checkpointer writes them;
  run/               a seeded deterministic CLI run (tiny Fashion-MNIST stand-in): every
                     variable of its last checkpoint, results.json without times, and
                     run_identity.json;
  study_hashes.json  the run directory (runs/<hash>/seed<s>) of every variant and seed of the
                     shipped study configs.
"""

import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(HERE))
os.environ['TF_ENABLE_ONEDNN_OPTS'] = '1'  # as tests/conftest.py sets it
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pin_cases  # noqa: E402  (tests/pins/pin_cases.py: the cases, shared with the test)


def main():
  import numpy as np
  cases = pin_cases
  out = {}
  for name, kw in cases.METHOD_CASES.items():
    values, loss = cases.method_case(name, kw)
    out.update({f'{name}/{k}': v for k, v in values.items()})
    out[f'{name}/__loss__'] = np.asarray(loss)
  np.savez_compressed(os.path.join(HERE, 'methods.npz'), **out)
  np.savez_compressed(os.path.join(HERE, 'views.npz'), **cases.views_case())
  ckpt_root = os.path.join(HERE, 'checkpoints')
  shutil.rmtree(ckpt_root, ignore_errors=True)
  for name in cases.CHECKPOINT_CASES:
    cases.write_checkpoint_case(name, os.path.join(ckpt_root, name))
  run_root = os.path.join(HERE, 'run')
  shutil.rmtree(run_root, ignore_errors=True)
  os.makedirs(run_root)
  tmp = os.path.join('/tmp', 'minc_tf_pin_run')
  shutil.rmtree(tmp, ignore_errors=True)
  state, results, identity = cases.run_case(tmp)
  np.savez_compressed(os.path.join(run_root, 'state.npz'), **state)
  with open(os.path.join(run_root, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(run_root, 'run_identity.json'), 'w') as f:
    json.dump(identity, f, indent=1, sort_keys=True)
  with open(os.path.join(HERE, 'study_hashes.json'), 'w') as f:
    json.dump(cases.study_hashes(), f, indent=1, sort_keys=True)
  print('pins written to', HERE)


if __name__ == '__main__':
  main()
