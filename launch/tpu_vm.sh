#!/usr/bin/env bash
# Cloud TPU with TensorFlow: create the TPU VM (or pod slice), install minc_tf, pretrain, watch
# in TensorBoard, delete.
#
#   PROJECT=my-project ZONE=us-central2-b TPU=minc-v4-8 BUCKET=gs://my-bucket \
#     bash launch/tpu_vm.sh [create|install|smoke|train|tensorboard|delete] [extra minc_tf.main flags]
#
# POD=1 (launch/tpu_pod.sh sets it) runs a multi-host pod slice as TensorFlow does: one client,
# on worker 0 only, with --tpu=$TPU (the TPU's name) and TPU_LOAD_LIBRARY=0; it reaches the
# other hosts' TPUs itself. A single host runs with --tpu=local.
# The VM image is TensorFlow's runtime for TF_VERSION (default 2.18.0, the newest TensorFlow
# with published TPU images; tpu-ubuntu2204-base is the JAX / PyTorch one). `create` reads the
# zone's published list (gcloud compute tpus tpu-vm versions list) and takes the image for
# TF_VERSION, pod or single host and the chip family (2.18 has -v5p-and-below and -v5e-and-v6
# builds); it stops, naming the TensorFlow images there, when none matches. VERSION=<image>
# picks one yourself (checked against the same list). TPU_VERSIONS_FILE (one image per line)
# replaces the gcloud query: the offline stand-in the tests use (DRY_RUN=1 still runs that
# read-only query, the check itself).
# `install` keeps the image's TensorFlow, libtpu and their dependencies (a constraints file of
# the installed versions, Keras' aside) and checks that TensorFlow is TF_VERSION; `train` sets the
# PJRT environment as Google's TF-on-TPU CI sets it (single host:
# NEXT_PLUGGABLE_DEVICE_USE_C_API, TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so; a pod:
# TPU_LOAD_LIBRARY=0).
# `smoke` (run it before booking a pod; docs/scaling.md says what it checks): a v4-8 run of
# gin/smoke_tpu.gin, B = 256 for 100 steps with the evaluation, into its own run dir
# (smoke_<experiment>_<accelerator>; smoke sets RUN and TOPOLOGY_GIN itself).
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
TF_VERSION=${TF_VERSION:-2.18.0}
VERSION=${VERSION:-}
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

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

# The zone's published TPU runtime images, one per line.
published_versions() {
  if [ -n "${TPU_VERSIONS_FILE:-}" ]; then
    cat "$TPU_VERSIONS_FILE"
  else
    gcloud compute tpus tpu-vm versions list --project="$PROJECT" --zone="$ZONE" \
      --format='value(name)' | sed 's,.*/,,'
  fi
}

# The runtime image for TF_VERSION on this slice, from the published list (or VERSION, checked).
choose_version() {
  local published pod prefix family
  if ! published=$(published_versions) || [ -z "$published" ]; then
    echo "Could not list the TPU runtime images of zone $ZONE (gcloud compute tpus tpu-vm versions list)." >&2
    echo "Fix: check PROJECT, ZONE and gcloud auth, or name the image with VERSION=..." >&2
    exit 2
  fi
  if [ -n "$VERSION" ]; then
    if grep -qxF "$VERSION" <<< "$published"; then echo "$VERSION"; return; fi
    echo "TPU runtime image $VERSION is not published in zone $ZONE." >&2
  else
    if [ "$POD" = 1 ]; then pod=-pod; else pod=; fi
    prefix="tpu-vm-tf-${TF_VERSION}${pod}-pjrt"
    case "$ACCELERATOR" in
      v5litepod-*|v5e-*) family=v5e-and-v6 ;;
      v6e-*) family=v5e-and-v6
        # No shipped config targets Trillium, and a public report has 2.18's v5e-and-v6 image
        # see the chips of a v6e-4 but crash creating TPUStrategy: say so before booking it.
        echo "Warning: $ACCELERATOR (v6e) is untested with minc_tf and has no gin/tpu_*.gin; TensorFlow 2.18 on v6e is reported to fail creating TPUStrategy. Run \`smoke\` on it before a long run." >&2 ;;
      *) family=v5p-and-below ;;
    esac
    for candidate in "$prefix-$family" "$prefix"; do
      if grep -qxF "$candidate" <<< "$published"; then echo "$candidate"; return; fi
    done
    echo "No TensorFlow $TF_VERSION TPU image for $ACCELERATOR${pod:+ (a pod slice)} is published in zone $ZONE (${prefix} or ${prefix}-${family})." >&2
  fi
  echo "TensorFlow images published there: $(grep '^tpu-vm-tf-' <<< "$published" | tr '\n' ' ')" >&2
  echo "Fix: set TF_VERSION to one of them (minc_tf supports TensorFlow 2.18 to 2.21), or VERSION=<image>." >&2
  exit 2
}

# The TensorFlow client runs on worker 0 (the only host of a single VM).
ssh0() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --project="$PROJECT" --zone="$ZONE" --worker=0 \
    --command="$1"
}

cmd=${1:-train}
shift || true
if [ "$cmd" = smoke ]; then
  # A v4-8 (or any single host) run of the shipped recipe at B = 256 for 100 steps, with the
  # evaluation on subsets: about 10 minutes (docs/scaling.md lists what it checks).
  if [ "$POD" = 1 ]; then
    echo "smoke runs on a single host (e.g. ACCELERATOR=v4-8 bash launch/tpu_vm.sh smoke), before booking the pod." >&2
    exit 2
  fi
  TOPOLOGY_GIN=gin/smoke_tpu.gin
  RUN=smoke_$(basename "$GIN" .gin)_${ACCELERATOR}
  cmd=train
fi
case "$cmd" in
  create)
    image=$(choose_version)
    run gcloud compute tpus tpu-vm create "$TPU" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$image"
    ;;
  install)
    # The image's packages stay as they are: every installed version but Keras' (minc_tf needs
    # Keras 3.15) constrains pip, so TensorFlow, libtpu and what TensorFlow needs (numpy,
    # protobuf, ml_dtypes, tensorboard) are never replaced: a clash is a resolution error, not
    # a broken TensorFlow. Then TensorFlow must be TF_VERSION.
    pip_install="cd minc_tf && python3 -m pip list --format=freeze | grep -viE '^keras==' > ~/image_packages.txt \
&& python3 -m pip install -e . -c ~/image_packages.txt \
&& python3 -c 'import sys, tensorflow as tf; sys.exit(0 if tf.__version__ == \"$TF_VERSION\" else \"the image has TensorFlow %s, not TF_VERSION=$TF_VERSION: set TF_VERSION to it\" % tf.__version__)'"
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
    # The PJRT environment as Google's TF-on-TPU CI sets it (ml-auto-solutions): a pod's single
    # client loads no local libtpu; a single host loads /lib/libtpu.so through the C API.
    if [ "$POD" = 1 ]; then
      target="--tpu=$TPU"; env="TPU_LOAD_LIBRARY=0 "
    else
      target=--tpu=local
      env="NEXT_PLUGGABLE_DEVICE_USE_C_API=true TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so "
    fi
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
    echo "usage: $0 [create|install|smoke|train|tensorboard|delete] [extra flags]" >&2
    exit 2
    ;;
esac
