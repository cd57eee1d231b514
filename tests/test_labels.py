"""labels.py: every label format parses back to what wrote it, and only its own labels."""

from minc_tf import labels


def test_sweep_labels_round_trip():
  assert labels.sweep_label('batch', 64, 0.99) == 'minc decay=0.99 B=64'
  assert labels.sweep_label('width', 256) == 'spectral k=256'
  assert labels.parse_sweep(labels.sweep_label('batch', 64, 0.99)) == (('B', 64), 0.99)
  assert labels.parse_sweep(labels.sweep_label('width', 256)) == (('k', 256), 'spectral')
  assert labels.parse_sweep(labels.sweep_label('batch', 32, 0.0)) == (('B', 32), 0.0)
  assert labels.parse_sweep('BYOL lr=0.001') is None


def test_screen_and_final_labels_round_trip():
  assert labels.parse_screen(labels.screen_label('BYOL', 1e-3)) == ('BYOL', 1e-3)
  assert labels.parse_final(labels.final_label('MINC (ours)', 2e-3)) == ('MINC (ours)', 2e-3)
  assert labels.parse_final(labels.screen_label('BYOL', 1e-3)) is None
  assert labels.parse_screen('spectral k=256') is None


def test_cell_labels_round_trip_and_are_told_from_the_others():
  label = labels.cell_label('MINC queue H=4096', 16, 2e-3)
  assert label == 'MINC queue H=4096 B=16 (lr 0.002)'
  assert labels.parse_cell(label) == ('MINC queue H=4096', 16, 2e-3)
  assert labels.parse_cell(labels.screen_label('Spectral', 1e-3)) is None
  assert labels.parse_cell(labels.final_label('Spectral', 1e-3)) is None
  assert labels.parse_sweep(label) is None and labels.parse_final(label) is None
