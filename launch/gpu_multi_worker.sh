#!/usr/bin/env bash
# GPU cluster: MultiWorkerMirroredStrategy, one process per host, configured through TF_CONFIG.
# Run this on every host with its own index:
#
#   HOSTS="10.0.0.1:2222,10.0.0.2:2222" INDEX=0 MODEL_DIR=gs://bucket/run DATA_DIR=gs://bucket/tfds \
#     bash launch/gpu_multi_worker.sh [extra minc_tf.main flags]
#
# All hosts must see the same MODEL_DIR (GCS or a shared file system). GIN (default
# gin/minc.gin) is the experiment; PLATFORM_GIN (default gin/gpu_cluster.gin) the GPU host loop:
# a few steps per call, so a preemption's SIGTERM is acted on within its 30 s notice.
set -euo pipefail
: "${HOSTS:?comma-separated host:port list, same order on every host}" "${INDEX:?the index of this host in HOSTS}"
: "${MODEL_DIR:?shared model dir}" "${DATA_DIR:?TFDS data dir}"
GIN=${GIN:-gin/minc.gin}
PLATFORM_GIN=${PLATFORM_GIN:-gin/gpu_cluster.gin}

IFS=',' read -r -a hosts <<< "$HOSTS"
workers=$(printf '"%s",' "${hosts[@]}")
workers=${workers%,}
TF_CONFIG=$(printf '{"cluster": {"worker": [%s]}, "task": {"type": "worker", "index": %d}}' "$workers" "$INDEX")
export TF_CONFIG

exec python3 -m minc_tf.main --gin_file="$GIN" --gin_file="$PLATFORM_GIN" --strategy=multi_worker --model_dir="$MODEL_DIR" \
  --gin_bindings="load_data.data_dir='$DATA_DIR'" "$@"
