"""Files under a model dir on any filesystem TensorFlow reads: local disks, gs:// and ram://.

Every file is written whole under a name of its own and renamed into place, so a reader (or a
crash) never sees half a file, and two writers never share a temporary name. Through tf.io.gfile
only: os, shutil and open work on local paths alone. (TensorFlow's ram:// filesystem appends
when an existing file is opened for writing; a fresh temporary name and a rename avoid that
too.)
"""

import os
import uuid

import tensorflow as tf


def _temporary(path):
  return f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'


def write(path, data):
  """Writes `data` (str or bytes) to `path` atomically."""
  tmp = _temporary(path)
  with tf.io.gfile.GFile(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_with(path, writer, binary=False):
  """Atomically writes `path` with writer(file_object) (e.g. json.dump, savefig)."""
  tmp = _temporary(path)
  with tf.io.gfile.GFile(tmp, 'wb' if binary else 'w') as f:
    writer(f)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def copy(src, dst):
  """Copies a file over `dst` (written beside it, then renamed)."""
  tmp = _temporary(dst)
  tf.io.gfile.copy(src, tmp)
  tf.io.gfile.rename(tmp, dst, overwrite=True)
