#!/usr/bin/env bash
# The accelerator check: on a machine with an NVIDIA GPU, install the GPU build of minc_tf into
# its own venv, then print, each as soon as it is measured, the train-step images/s of the
# shipped configs (bench/accelerator.py): MINC as gin/minc.gin ships it (no target network),
# Spectral Contrastive with gin/spectral.gin's 8192-8192-8192 projector, and supervised
# training of the same ResNet-50 (a linear head, cross-entropy; no config ships one), each
# without and with XLA, in true float32 (TF32 off) and in bf16 (mixed_bfloat16). Each cell
# trains 2 + STEPS steps through train.run, with its callbacks and its tf.data input pipeline
# (synthetic ImageNet-sized JPEGs served as imagenet2012 by a mocked TFDS, or DATA_DIR's
# prepared imagenet2012), at 224 px and B = BATCH pairs per step; the first 2 steps (compilation)
# are not timed. Then the ratios xla/no-xla, bf16/float32 and each method over supervised, and
# the views made on the accelerator, whole batch against one example at a time
# (bench/views.py). Each cell stops at CELL_LIMIT seconds, and no cell runs past TOTAL seconds
# (600) from the start, install included, less the views' share: a first run, which downloads
# TensorFlow's CUDA wheels, may leave time for only some cells; rerun with the venv in place.
# It has not run on a GPU: none was available where it was written (tests/test_bench.py runs
# bench/accelerator.py on CPU at a tiny size). Without a GPU it stops at once with a message,
# exit 3.
#
#   bash bench/accelerator_check.sh            # from the repository root
#   BATCH=64 STEPS=10 CELL_LIMIT=60 TOTAL=600 DATA_DIR=gs://b/tfds VENV=.venv-gpu \
#     bash bench/accelerator_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${BATCH:-64}"
STEPS="${STEPS:-10}"
CELL_LIMIT="${CELL_LIMIT:-60}"
TOTAL="${TOTAL:-600}"
VIEWS_S="${VIEWS_S:-90}"
DATA_DIR="${DATA_DIR:-}"
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
installed=$(( $(date +%s) - start ))
echo "installed in ${installed} s"

# What is left of TOTAL for the cells, after the views' share and a margin for the ratios.
budget=$(( TOTAL - installed - VIEWS_S - 10 ))
if (( budget < CELL_LIMIT )); then
  echo "accelerator_check: ${budget} s left for the cells after the install; some or all will" \
    "be skipped: rerun (the venv is kept) for all of them" >&2
  budget=$(( budget > 0 ? budget : 0 ))
fi
data=()
if [[ -n "$DATA_DIR" ]]; then
  data=(--data_dir "$DATA_DIR")
fi
# Its cells' TensorFlow logs go to files; it prints each figure as it is measured (grep
# --line-buffered: a block-buffered grep would hold them back until the end).
python bench/accelerator.py --batch "$BATCH" --steps "$STEPS" --cell_limit "$CELL_LIMIT" \
  --budget "$budget" ${data[@]+"${data[@]}"} 2>&1 \
  | grep --line-buffered -v -e '^W0' -e '^I0' -e 'WARNING' \
  || echo "accelerator.py: some cells gave no figure (above)"

left=$(( TOTAL - ($(date +%s) - start) ))
views_s=$(( left < VIEWS_S ? left : VIEWS_S ))
if (( views_s > 10 )); then
  timeout "$views_s" python bench/views.py --batch 256 --size 224 --repeats 3 \
    2>&1 | grep --line-buffered -v -e '^W0' -e '^I0' -e 'WARNING' \
    || echo "views.py: failed or timed out (${views_s} s)"
else
  echo "views.py: skipped (the ${TOTAL} s are spent)"
fi
echo "accelerator_check: done in $(( $(date +%s) - start )) s"
