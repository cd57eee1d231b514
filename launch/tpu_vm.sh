#!/usr/bin/env bash
# Single Cloud TPU VM (e.g. v4-8): create it, install minc_tf, pretrain, watch in TensorBoard.
#
#   PROJECT=my-project ZONE=us-central2-b TPU=minc-v4-8 BUCKET=gs://my-bucket \
#     bash launch/tpu_vm.sh [create|install|train|tensorboard|delete] [extra minc_tf.main flags]
#
# ImageNet must be prepared once by TFDS under $BUCKET/tensorflow_datasets (README: Cloud TPU).
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU:?set TPU (the VM name)}" "${BUCKET:?set BUCKET (gs://...)}"
ACCELERATOR=${ACCELERATOR:-v4-8}
VERSION=${VERSION:-tpu-ubuntu2204-base}
GIN=${GIN:-gin/minc.gin}
RUN=${RUN:-$(basename "$GIN" .gin)_$(date +%Y%m%d_%H%M%S)}
REPO=${REPO:-https://github.com/minc-tf/minc_tf.git}

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}

cmd=${1:-train}
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION"
    ;;
  install)
    ssh_all "git clone $REPO minc_tf || (cd minc_tf && git pull); cd minc_tf && pip install -e . 'tensorflow-tpu==2.21.*' -f https://storage.googleapis.com/libtpu-tf-releases/index.html"
    ;;
  train)
    extra=$(printf ' %q' "$@")
    ssh_all "cd minc_tf && nohup python3 -m minc_tf.main --gin_file=$GIN --strategy=tpu --tpu=local \
      --model_dir=$BUCKET/runs/$RUN --mode=train_and_eval \
      --gin_bindings=\"load_data.data_dir='$BUCKET/tensorflow_datasets'\" $extra > train_$RUN.log 2>&1 &"
    echo "model dir: $BUCKET/runs/$RUN (log: ~/minc_tf/train_$RUN.log on the VM)"
    ;;
  tensorboard)
    tensorboard --logdir "$BUCKET/runs"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU" --project="$PROJECT" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 [create|install|train|tensorboard|delete] [extra flags]" >&2
    exit 2
    ;;
esac
