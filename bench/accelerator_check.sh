#!/usr/bin/env bash
# The accelerator check: on a machine with an NVIDIA GPU, install the GPU build of minc_tf into
# its own venv and print the images/s of the MINC (live EMA target), Spectral and supervised
# train steps of ResNet-50 at 224 px under XLA, in bf16 and float32, and their ratios
# (bench/step.py), then the views made on the accelerator, whole batch against one example at a
# time (bench/views.py). Sized for about 8 minutes (each part has a time limit; it has not run
# on a GPU yet: none was available where it was written). Without a GPU it stops at once with
# a message, exit 3.
#
#   bash bench/accelerator_check.sh            # from the repository root
#   BATCH=64 STEPS=10 VENV=.venv-gpu bash bench/accelerator_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${BATCH:-64}"
STEPS="${STEPS:-10}"
VENV="${VENV:-.venv-gpu}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "accelerator_check: no NVIDIA GPU here (nvidia-smi finds none); this check needs one." >&2
  exit 3
fi
nvidia-smi -L
start=$(date +%s)

python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[gpu]'
python - <<'PY'
import tensorflow as tf
gpus = tf.config.list_physical_devices('GPU')
print('TensorFlow', tf.__version__, 'sees', len(gpus), 'GPU(s)')
raise SystemExit(0 if gpus else 'TensorFlow does not see the GPU: check the CUDA wheels')
PY
echo "installed in $(( $(date +%s) - start )) s"

for precision in mixed_bfloat16 float32; do
  timeout 150 python bench/step.py --depth 50 --image_size 224 --batch "$BATCH" \
    --steps "$STEPS" --repeats 2 --jit --precision "$precision" --methods minc spectral \
    2>&1 | grep -v -e '^W0' -e '^I0' -e 'WARNING' || echo "step.py $precision: failed or timed out"
done
timeout 120 python bench/views.py --batch 256 --size 224 --repeats 3 \
  2>&1 | grep -v -e '^W0' -e '^I0' -e 'WARNING' || echo "views.py: failed or timed out"
echo "accelerator_check: done in $(( $(date +%s) - start )) s"
