"""A mutation pass over the wiring: plants one bug at a time, runs the tests that guard it, and
prints which were caught.

  python bench/mutants.py                 (from the repository root; about 13 minutes)
  python bench/mutants.py --only 3 7      (some mutants, by number)

Each mutant is a one-line change (file, text, replacement) of a setting that stops reaching
the maths, or a value passed wrongly; the source is restored after each, also on Ctrl-C. A
mutant is killed when the guarding tests fail. Prints one line per mutant and the score.
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ['tests/test_wiring.py', 'tests/test_methods.py', 'tests/test_model.py']
EXPORT = 'tests/test_export.py'

MUTANTS = [  # (what it breaks, file, text, replacement[, the tests that guard it: TESTS])
    ("the probe's stop_gradient removed (labels train the encoder)", 'minc_tf/model.py',
     'self.probe(tf.stop_gradient(h))', 'self.probe(h)'),
    ('target outputs taken from the online network', 'minc_tf/model.py',
     '    if self.target_encoder is None:\n      return tf.stop_gradient(z)',
     '    if True:\n      return tf.stop_gradient(z)'),
    ("MINC's loss not divided by mu", 'minc_tf/methods/minc.py',
     'return loss / scale, {', 'return loss, {'),
    ("SimCLR's temperature not passed", 'minc_tf/methods/simclr.py',
     'temperature=self.temperature', 'temperature=0.1'),
    ("MINC's lower_triangular not passed", 'minc_tf/methods/minc.py',
     'lower_triangular=self.lower_triangular', 'lower_triangular=False'),
    ("MINC's summary_source ignored", 'minc_tf/methods/minc.py',
     "src = t if self.summary_source == 'target' else", 'src = t if True else'),
    ("MINC's summary_centered not passed", 'minc_tf/methods/minc.py',
     'centered=self.summary_centered', 'centered=False'),
    ("MINC's summary_decay ignored", 'minc_tf/methods/minc.py',
     '    decay = self.summary_decay\n', '    decay = 0.0\n'),
    ("the summary's bias correction dropped", 'minc_tf/methods/minc.py',
     '  return summary / (1.0 - decay ** steps)', '  return summary'),
    ('the summary never updated', 'minc_tf/methods/minc.py',
     '    self.summary.assign(decay * self.summary + (1.0 - decay) * batch_moment)\n'
     '    self.summary_steps.assign_add(1.0)\n    return bias_corrected(',
     '    self.summary_steps.assign_add(1.0)\n    return bias_corrected('),
    ("Spectral's mu not passed", 'minc_tf/methods/spectral.py', 'mu=self.mu', 'mu=1.0'),
    ('the predictor skipped', 'minc_tf/model.py',
     'q = self.predictor(z, training=training) if self.predictor is not None else z', 'q = z'),
    ('a bound method setting replaced by its default', 'minc_tf/model.py',
     'own = {name: settings.get(name, declared[name].default) for name in cls.SETTINGS}',
     'own = {name: declared[name].default for name in cls.SETTINGS}'),
    ('byol_preset ignored', 'minc_tf/model.py',
     '    tau_base = optim.preset(byol_preset)[2]', '    pass'),
    ('the target EMA update skipped', 'minc_tf/model.py',
     '      t.assign(tau * t + (1.0 - tau) * tf.cast(o, t.dtype))', '      pass'),
    ("the target's BatchNorm in inference mode", 'minc_tf/model.py',
     'self.target_projector(self.target_encoder(x, training=True), training=True)',
     'self.target_projector(self.target_encoder(x, training=False), training=False)'),
    ("view 2 made with view 1's transform (host)", 'minc_tf/data.py',
     'view2(crops[1], rng)', 'view1(crops[1], rng)'),
    ("view 2 made with view 1's transform (device)", 'minc_tf/augment.py',
     'enumerate(((view1, x1), (view2, x2)))', 'enumerate(((view1, x1), (view1, x2)))'),
    ('evaluation features in training mode', 'minc_tf/evaluate.py',
     'lambda x, *rest: (encoder(x, training=False),)',
     'lambda x, *rest: (encoder(x, training=True),)'),
    ('the gradient not divided by the replicas', 'minc_tf/model.py',
     'scaled = self.optimizer.scale_loss(total / replicas)',
     'scaled = self.optimizer.scale_loss(total)'),
    ("the method's loss terms not logged", 'minc_tf/model.py',
     '      self.term_trackers[name].update_state(value)', '      pass'),
    # The model dir and its record (issue 28's faults), each with the tests that guard it.
    ('no lock taken by a training', 'minc_tf/train.py',
     'take = lambda: run_dir.Lock(model_dir).acquire() if', 'take = lambda: None if',
     ['tests/test_faults.py::test_a_second_training_of_the_same_dir_stops_while_the_first_runs']),
    ('a foreign directory trained into', 'minc_tf/run_dir.py',
     '  if names and not ours:', '  if False:',
     ['tests/test_run_dir.py', 'tests/test_faults.py::'
      'test_a_directory_of_other_files_is_never_trained_into']),
    ("blown-up weights checkpointed (the guard's norm check off)", 'minc_tf/checkpoint.py',
     '    if not np.isfinite(norm) or (self._max_growth', '    if False and (self._max_growth',
     ['tests/test_faults.py::test_blown_up_weights_are_never_checkpointed_and_the_fix_works']),
    ('results.json written only after the export', 'minc_tf/train.py',
     '      run_dir.write_results(job.out_dir, results, job.checkpointer.step, session=False,\n'
     '                            hparams=False)\n', '',
     ['tests/test_faults.py::test_a_run_finished_after_a_crash_in_export_reports_its_training']),
    ('a one-class evaluation let through', 'minc_tf/train.py',
     "  if mode in ('eval', 'train_and_eval') and data.num_classes < 2:",
     '  if False:', ['tests/test_faults.py::test_a_one_class_folder_is_not_evaluated']),
    # MINC's summary options (issue 25), guarded by their reference and ground-truth tests.
    ("the horizon's decay ignored (the batch alone)", 'minc_tf/methods/minc.py',
     'decay = tf.maximum(0.0, 1.0 - n / float(self.summary_horizon))', 'decay = 0.0 * n',
     ['tests/test_methods.py', 'tests/test_ground_truth.py']),
    ('the queue not updated', 'minc_tf/methods/minc.py',
     '      self.queue.assign(buf[:2 * self.summary_horizon])\n', '',
     ['tests/test_methods.py', 'tests/test_ground_truth.py']),
    ('the preconditioner not applied', 'minc_tf/losses.py',
     '          step = tf.matmul(step, preconditioner)', '          pass',
     ['tests/test_methods.py']),
    ('the cross-view moment replaced by the second moment', 'minc_tf/methods/minc.py',
     "    if self.summary_moment == 'cross':\n      t1, t2", '    if False:\n      t1, t2',
     ['tests/test_methods.py']),
    ("Spectral's positives counted in its repulsion", 'minc_tf/losses.py',
     'tf.reduce_sum(tf.square(dots) * (1.0 - diag))', 'tf.reduce_sum(tf.square(dots))',
     ['tests/test_ground_truth.py']),
    ('IDX files whose counts disagree let through', 'minc_tf/sources.py',
     '      if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):',
     '      if False:',
     ['tests/test_faults.py::test_idx_files_whose_counts_disagree_stop_before_pretraining']),
    # Keras' other export formats (issue 27), each with the tests that guard it.
    ('the formats not written', 'minc_tf/export.py',
     '  _write_formats(model, formats, tmp)\n', '',
     [f'{EXPORT}::test_each_format_loaded_back_serves_what_the_saved_model_serves']),
    ('the formats normalised with another std than the SavedModel', 'minc_tf/export.py',
     '  _write_formats(model, formats, tmp)\n',
     '  _write_formats(serving_model(encoder, mean, np.asarray(std) * 1.01), formats, tmp)\n',
     [f'{EXPORT}::test_each_format_loaded_back_serves_what_the_saved_model_serves']),
    ("the formats' image size fixed at the training size", 'minc_tf/export.py',
     'tf.TensorSpec((None, None, None,', 'tf.TensorSpec((None, 16, 16,',
     [f'{EXPORT}::test_each_format_loaded_back_serves_what_the_saved_model_serves']),
    ('the formats not copied to an object store', 'minc_tf/export.py',
     '      files.copy(os.path.join(local, name), os.path.join(directory, name))', '      pass',
     [f'{EXPORT}::test_the_formats_reach_an_object_store_too']),
    ("export_encoder's converter check dropped", 'minc_tf/export.py',
     '  check_formats(formats)\n  model = serving_model', '  model = serving_model',
     [f'{EXPORT}::test_a_format_whose_converter_is_missing_stops_before_anything_is_written']),
    ("run's up-front converter check dropped", 'minc_tf/train.py',
     '    export_lib.check_formats(export_formats)\n', '    pass\n',
     [f'{EXPORT}::test_a_run_refuses_a_missing_converter_before_it_trains']),
    ("run.export_formats not passed to the training's export", 'minc_tf/train.py',
     'step=job.checkpointer.step, formats=job.export_formats)', 'step=job.checkpointer.step)',
     [f'{EXPORT}::test_training_and_the_export_mode_write_the_formats_asked_for']),
    ('run.export_formats not passed to the export mode', 'minc_tf/train.py',
     'step=step, formats=job.export_formats)', 'step=step)',
     [f'{EXPORT}::test_training_and_the_export_mode_write_the_formats_asked_for']),
]


def run(index, what, path, text, replacement, tests):
  full = os.path.join(REPO, path)
  with open(full) as f:
    source = f.read()
  if source.count(text) != 1:
    return 'stale', f'the text to mutate occurs {source.count(text)} times in {path}'
  try:
    with open(full, 'w') as f:
      f.write(source.replace(text, replacement))
    start = time.time()
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
                           *tests], cwd=REPO, capture_output=True, text=True)
    failed = [line.split(' ')[1] for line in proc.stdout.splitlines()
              if line.startswith('FAILED ')]
    # Killed only by a failing test: exit 1 with a FAILED line (not a collection error, exit
    # 2-4, nor "no tests ran", exit 5).
    verdict = 'killed' if proc.returncode == 1 and failed else (
        'SURVIVED' if proc.returncode == 0 else f'error (exit {proc.returncode})')
    return verdict, (f'{time.time() - start:.0f} s' +
                     (f', by {failed[0]}' if failed else ''))
  finally:
    with open(full, 'w') as f:
      f.write(source)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', type=int, nargs='*', help='mutant numbers (1-based)')
  parser.add_argument('--tests', nargs='*', default=TESTS)
  args = parser.parse_args()
  chosen = [(i, m) for i, m in enumerate(MUTANTS, 1) if not args.only or i in args.only]
  killed = 0
  for i, (what, path, text, replacement, *tests) in chosen:
    verdict, detail = run(i, what, path, text, replacement, tests[0] if tests else args.tests)
    killed += verdict == 'killed'
    print(f'{i:2d} {verdict:8s} {what} ({path}; {detail})', flush=True)
  print(f'score: {killed} of {len(chosen)} mutants killed')  # stale and error count as not
  return 0 if killed == len(chosen) else 1


if __name__ == '__main__':
  sys.exit(main())
