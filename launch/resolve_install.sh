#!/usr/bin/env bash
# Resolves the install of each platform with pip's dry run (needs the package registry, so not a
# CI test) and prints the TensorFlow distribution(s) each would install: exactly one each.
#
#   bash launch/resolve_install.sh [cpu gpu tpu]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIBTPU_INDEX=https://storage.googleapis.com/libtpu-tf-releases/index.html
report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
for extra in "${@:-cpu gpu tpu}"; do
  for e in $extra; do
    links=()
    if [ "$e" = tpu ]; then links=(-f "$LIBTPU_INDEX"); fi
    if ! "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$report" \
        ".[$e]" "${links[@]}" >/dev/null; then
      echo "$e: pip could not resolve .[$e]"
      status=1
      continue
    fi
    "$PYTHON" - "$e" "$report" <<'PY' || status=1
import json, sys
extra, path = sys.argv[1:]
with open(path) as f:
  installs = json.load(f)['install']
def name(i):  # normalised as pip does: tensorflow_tpu is tensorflow-tpu
  return i['metadata']['name'].lower().replace('_', '-')
tf = sorted(f"{name(i)}=={i['metadata']['version']}" for i in installs
            if name(i) in ('tensorflow', 'tensorflow-cpu', 'tensorflow-tpu'))
libtpu = [f"{name(i)}=={i['metadata']['version']}" for i in installs
          if name(i).startswith('libtpu')]
cuda = [i for i in installs if name(i).startswith('nvidia-')]
print(f"{extra}: {', '.join(tf) or 'no TensorFlow'}"
      + (f"; {', '.join(libtpu)}" if libtpu else '')
      + (f"; {len(cuda)} NVIDIA CUDA wheels" if cuda else ''))
sys.exit(0 if len(tf) == 1 else 1)
PY
  done
done
exit "$status"
