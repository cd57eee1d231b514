#!/usr/bin/env bash
# Cloud TPU pod slice (e.g. v4-32) with TensorFlow: one client on worker 0 with --tpu=<TPU name>
# (TensorFlow on a pod is single client; it reaches every host's TPUs itself and each input
# pipeline reads its own shard of the TFDS files), the pod runtime image, one model dir on GCS.
#
#   PROJECT=... ZONE=... TPU=minc-v4-32 BUCKET=gs://... [ACCELERATOR=v4-32] \
#     bash launch/tpu_pod.sh [create|install|train|tensorboard|delete] [extra flags]
set -euo pipefail
POD=1
export POD
exec bash "$(dirname "$0")/tpu_vm.sh" "$@"
