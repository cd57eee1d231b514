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
                  ['train', 'eval', 'export', 'train_and_eval', 'study', 'transfer', 'fine_tune'],
                  'What to do with the model dir (study: run_study, e.g. gin/study_ablation.gin; '
                  'transfer / fine_tune: the encoder of --source_dir on the gin-configured '
                  'dataset, frozen / also fine-tuned, results in --model_dir).')
flags.DEFINE_string('source_dir', None,
                    'With --mode=transfer or fine_tune: the finished run whose exported encoder '
                    'to evaluate on another dataset.')
flags.DEFINE_bool('verbose', False, 'Show tracebacks for user errors too.')
flags.DEFINE_bool('reuse_model_dir', False,
                  'Train in an existing --model_dir that holds files but no minc_tf run (refused '
                  'otherwise: the run would write over them).')
flags.DEFINE_bool('list_settings', False,
                  'List every gin setting with its default, allowed values and a line of doc, '
                  'then exit (e.g. --gin_bindings=build_model.mu=3 ... is how to set one).')
flags.DEFINE_bool('print_config', False,
                  'Print the resolved value of every gin setting under the given --gin_file and '
                  '--gin_bindings (bound ones marked), then exit without running.')
flags.DEFINE_bool('allow_config_change', False,
                  'Continue a model dir whose recorded defining settings (run_identity.json) '
                  'differ from this configuration (e.g. a lower learning rate after a NaN).')


INSTALL = ("pip install -e '.[cpu]'   (CPU hosts)\n"
           "  pip install -e '.[gpu]'   (NVIDIA GPU hosts: tensorflow[and-cuda])\n"
           "  pip install -e '.[tpu]' -f https://storage.googleapis.com/libtpu-tf-releases/"
           "index.html   (Cloud TPU VMs without TensorFlow; a TPU VM's TensorFlow image\n"
           "  has it: launch/tpu_vm.sh install keeps it)")


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
    if FLAGS.list_settings or FLAGS.print_config:
      from minc_tf import catalog
      print(catalog.list_text() if FLAGS.list_settings else catalog.resolved_text(), end='')
      return
    import gin
    logging.info('Configuration (--gin_file %s, --gin_bindings %s):\n%s', FLAGS.gin_file,
                 FLAGS.gin_bindings, gin.config_str())
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
                             reuse_model_dir=FLAGS.reuse_model_dir,
                             command_line=(FLAGS.gin_file, FLAGS.gin_bindings))
      results = {r['variant']: r.get('probe_top1') for r in rows}
    elif FLAGS.mode in ('transfer', 'fine_tune'):
      from minc_tf import data as data_lib
      from minc_tf import transfer
      transfer.check_source(FLAGS.source_dir, FLAGS.model_dir)  # before the data is read
      results = transfer.run(FLAGS.model_dir, FLAGS.source_dir, strategy, data_lib.load_data(),
                             fine_tuning=FLAGS.mode == 'fine_tune',
                             reuse_model_dir=FLAGS.reuse_model_dir)
    else:
      results = train.run(FLAGS.mode, FLAGS.model_dir, strategy,
                          allow_config_change=FLAGS.allow_config_change,
                          reuse_model_dir=FLAGS.reuse_model_dir)
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
  except Exception as e:  # pylint: disable=broad-except  (only a full disk is handled here)
    if FLAGS.verbose or not _disk_full(e):
      raise
    print(f'\nminc_tf error: the disk of --model_dir={FLAGS.model_dir} is full '
          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}). Every checkpoint already '
          'written is complete (they are written atomically), so the run resumes from the '
          'newest. Fix: free space (or move the dir to a larger disk), then rerun the same '
          'command.', file=sys.stderr)
    sys.exit(2)
  logging.info('results: %s', results)
  print('\nResults:', ', '.join(f'{k}={v}' for k, v in results.items()))


def _disk_full(error):
  """Whether `error` (an OSError, or TensorFlow's error of a file write) means no space."""
  import errno  # pylint: disable=g-import-not-at-top
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error) or 'Disk quota exceeded' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _parse_flags(argv):
  """absl's flag parsing, with errors as every other user error: a message and exit 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'\nminc_tf error: {e}. Fix: correct the flag; `python -m minc_tf.main --help` '
          'lists them.', file=sys.stderr)
    sys.exit(2)


def run_main():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run_main()
