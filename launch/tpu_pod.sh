#!/usr/bin/env bash
# Cloud TPU pod slice (e.g. v4-64): the same program runs on every host (--worker=all); each
# host reads its own shard of the TFDS files and feeds its local cores; one model dir on GCS.
#
#   PROJECT=... ZONE=... TPU=minc-v4-64 BUCKET=gs://... ACCELERATOR=v4-64 \
#     bash launch/tpu_pod.sh [create|install|train|tensorboard|delete] [extra flags]
set -euo pipefail
ACCELERATOR=${ACCELERATOR:-v4-64}
export ACCELERATOR
# A pod slice differs from a single VM only in its accelerator type: every command of
# tpu_vm.sh already runs on all workers.
exec bash "$(dirname "$0")/tpu_vm.sh" "$@"
