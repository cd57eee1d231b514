#!/usr/bin/env bash
# Cloud TPU with TensorFlow: create the TPU VM (or pod slice), install minc_tf, pretrain, watch
# in TensorBoard, delete.
#
#   PROJECT=my-project ZONE=us-central2-b TPU=minc-v4-8 BUCKET=gs://my-bucket \
#     bash launch/tpu_vm.sh [create|install|train|tensorboard|delete] [extra minc_tf.main flags]
#
# POD=1 (launch/tpu_pod.sh sets it) runs a multi-host pod slice as TensorFlow does: one client,
# on worker 0 only, with --tpu=$TPU (the TPU's name) and TPU_LOAD_LIBRARY=0; it reaches the
# other hosts' TPUs itself. A single host runs with --tpu=local.
# The VM image is TensorFlow's runtime for TF_VERSION (tpu-vm-tf-X.Y.Z[-pod]-pjrt;
# tpu-ubuntu2204-base is the JAX / PyTorch one), and the install matches it: tensorflow-tpu
# TF_VERSION with its libtpu.
# GIN (default gin/minc.gin) is the experiment; gin/tpu_<ACCELERATOR>.gin (TOPOLOGY_GIN) the
# slice's batch that fits. RUN names the run dir (default <experiment>_<accelerator>): rerun
# the same command to resume it. REPO: a git URL to clone on the VM; unset, `install` copies
# this working tree's HEAD over (git archive + scp).
# DRY_RUN=1 prints each command instead of running it.
# ImageNet must be prepared once by TFDS under $BUCKET/tensorflow_datasets (README: Cloud TPU).
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU:?set TPU (the TPU name)}" "${BUCKET:?set BUCKET (gs://...)}"
POD=${POD:-0}
if [ "$POD" = 1 ]; then ACCELERATOR=${ACCELERATOR:-v4-32}; else ACCELERATOR=${ACCELERATOR:-v4-8}; fi
TF_VERSION=${TF_VERSION:-2.20.0}
if [ "$POD" = 1 ]; then
  VERSION=${VERSION:-tpu-vm-tf-${TF_VERSION}-pod-pjrt}
else
  VERSION=${VERSION:-tpu-vm-tf-${TF_VERSION}-pjrt}
fi
GIN=${GIN:-gin/minc.gin}
# The slice's batch, host loop and precision (docs/scaling.md): gin/tpu_<accelerator>.gin.
TOPOLOGY_GIN=${TOPOLOGY_GIN:-gin/tpu_${ACCELERATOR//-/_}.gin}
if [ "${1:-train}" = train ] && [ ! -f "$(dirname "$0")/../$TOPOLOGY_GIN" ]; then
  echo "No $TOPOLOGY_GIN for ACCELERATOR=$ACCELERATOR: its global batch would not be known to fit." >&2
  echo "Fix: use a slice with a gin file (gin/tpu_*.gin), or write one (docs/scaling.md has the arithmetic) and set TOPOLOGY_GIN." >&2
  exit 2
fi
# A stable name: rerunning the same command resumes the same run.
RUN=${RUN:-$(basename "$GIN" .gin)_${ACCELERATOR}}
# The source: a git URL you name (REPO=...), or else this working tree, copied over by scp.
REPO=${REPO:-}
LIBTPU_INDEX=https://storage.googleapis.com/libtpu-tf-releases/index.html

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# The TensorFlow client runs on worker 0 (the only host of a single VM).
ssh0() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=0 \
    --command="$1"
}

cmd=${1:-train}
shift || true
case "$cmd" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION"
    ;;
  install)
    pip_install="cd minc_tf && pip install -e '.[tpu]' tensorflow-tpu==$TF_VERSION -f $LIBTPU_INDEX"
    if [ -n "$REPO" ]; then
      ssh0 "(git clone $REPO minc_tf || (cd minc_tf && git pull)) && $pip_install"
    else
      # The working tree as it is (uncommitted edits and new files included, ignored ones not).
      tmp=$(mktemp -d)
      tarball=$tmp/minc_tf.tar.gz
      root=$(cd "$(dirname "$0")/.." && pwd)
      git -C "$root" ls-files --cached --others --exclude-standard > "$tmp/files"
      run tar czf "$tarball" -C "$root" --ignore-failed-read --transform 's,^,minc_tf/,' \
        -T "$tmp/files"
      run gcloud compute tpus tpu-vm scp "$tarball" "$TPU:minc_tf.tar.gz" --project="$PROJECT" \
        --zone="$ZONE" --worker=0
      ssh0 "rm -rf minc_tf && tar xzf minc_tf.tar.gz && $pip_install"
    fi
    ;;
  train)
    extra=$(printf ' %q' "$@")
    # TPU_ACCELERATOR_TYPE: the batch is checked against the slice's HBM before compiling.
    if [ "$POD" = 1 ]; then target="--tpu=$TPU"; env="TPU_LOAD_LIBRARY=0 "; else target=--tpu=local; env=""; fi
    env="TPU_ACCELERATOR_TYPE=$ACCELERATOR $env"
    ssh0 "cd minc_tf && ${env}nohup python3 -m minc_tf.main --gin_file=$GIN --gin_file=$TOPOLOGY_GIN --strategy=tpu $target \
--model_dir=$BUCKET/runs/$RUN --mode=train_and_eval \
--gin_bindings=\"load_data.data_dir='$BUCKET/tensorflow_datasets'\"$extra > ~/train_$RUN.log 2>&1 &"
    echo "model dir: $BUCKET/runs/$RUN (log: ~/train_$RUN.log on worker 0)"
    ;;
  tensorboard)
    run tensorboard --logdir "$BUCKET/runs"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU" --project="$PROJECT" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 [create|install|train|tensorboard|delete] [extra flags]" >&2
    exit 2
    ;;
esac
