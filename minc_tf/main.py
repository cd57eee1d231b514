"""Launch: absl flags -> gin -> strategy -> train.run(). The only module that reads flags.

  python -m minc_tf.main --gin_file=gin/minc.gin --model_dir=/tmp/minc [--gin_bindings=...]
"""

import os
import sys

# Before TensorFlow is imported anywhere: oneDNN is off by default on x86 CPUs and its kernels
# are measured 1.4-3.9x faster for conv training steps. A user's own setting wins.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('gin_file', [], 'Gin config files, applied in order.')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings, applied after the files.')
flags.DEFINE_string('model_dir', '/tmp/minc_tf', 'Checkpoints, TensorBoard logs, export, results.')
flags.DEFINE_enum('strategy', 'default', ['default', 'mirrored', 'multi_worker', 'tpu'],
                  'tf.distribute strategy.')
flags.DEFINE_string('tpu', None, "TPU name, or 'local' on a Cloud TPU VM (with --strategy=tpu).")
flags.DEFINE_enum('mode', 'train_and_eval',
                  ['train', 'eval', 'export', 'train_and_eval', 'study'],
                  'What to do with the model dir (study: run_study, e.g. gin/study_ablation.gin).')
flags.DEFINE_bool('verbose', False, 'Show tracebacks for user errors too.')
flags.DEFINE_bool('allow_config_change', False,
                  'Continue a model dir whose recorded defining settings (run_identity.json) '
                  'differ from this configuration (e.g. a lower learning rate after a NaN).')


INSTALL = ("pip install -e '.[cpu]'   (CPU hosts)\n"
           "  pip install -e '.[gpu]'   (NVIDIA GPU hosts: tensorflow[and-cuda])\n"
           "  pip install -e '.[tpu]' -f https://storage.googleapis.com/libtpu-tf-releases/"
           "index.html   (Cloud TPU VMs)")


def main(argv):
  del argv
  try:
    import tensorflow  # noqa: F401  (one of three distributions provides it)
  except ImportError:
    print(f'\nminc_tf error: TensorFlow is not installed. Fix: install the build for this '
          f'machine, exactly one of:\n  {INSTALL}', file=sys.stderr)
    sys.exit(2)
  from minc_tf.errors import UserError
  from minc_tf import config
  from minc_tf import configurables  # noqa: F401  (registers every gin configurable)
  try:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    from minc_tf import runtime
    from minc_tf import strategy as strategy_lib
    from minc_tf import train
    # Before anything starts TensorFlow's runtime (the strategy does).
    runtime.set_up_determinism(runtime.deterministic_from_gin(),
                               one_op_at_a_time=FLAGS.strategy == 'default')
    strategy = strategy_lib.get_strategy(FLAGS.strategy, FLAGS.tpu)
    if FLAGS.mode == 'study':
      from minc_tf import study
      rows = study.run_study(FLAGS.model_dir, strategy,
                             allow_config_change=FLAGS.allow_config_change,
                             command_line=(FLAGS.gin_file, FLAGS.gin_bindings))
      results = {r['variant']: r.get('probe_top1') for r in rows}
    else:
      results = train.run(FLAGS.mode, FLAGS.model_dir, strategy,
                          allow_config_change=FLAGS.allow_config_change)
  except KeyboardInterrupt:
    # Ctrl-C outside training (training saves and returns), or a second one during a step.
    print('\nminc_tf: interrupted. Checkpoints already written are kept; rerun the same command '
          'to resume.', file=sys.stderr)
    sys.exit(130)
  except UserError as e:
    if FLAGS.verbose:
      raise
    message = str(e).split('\n  In call to configurable')[0]  # gin's note adds nothing here
    print(f'\nminc_tf error: {message}', file=sys.stderr)
    sys.exit(2)
  logging.info('results: %s', results)
  print('\nResults:', ', '.join(f'{k}={v}' for k, v in results.items()))


def run_main():
  app.run(main)


if __name__ == '__main__':
  run_main()
