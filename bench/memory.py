"""Activation memory per TPU chip of the ImageNet configs, counted from the model (no TPU needed).

  python bench/memory.py

Counts every layer output of ResNet-50 and MINC's 4096-256 projector at 224 px (the values a
training step keeps for its backward pass, two views per image), before XLA's fusion and
rematerialisation reduce them, for B = 4096 on v4 slices (32 GiB of HBM per chip). An estimate
for choosing a slice, not a measurement.
"""

import math
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minc_tf import networks  # noqa: E402

BATCH = 4096


def main():
  enc = networks.build_encoder((224, 224, 3), depth=50)
  proj = networks.build_mlp(enc.output_shape[-1], (4096,), 256, name='projector')
  per_image = sum(math.prod(d or 1 for d in layer.output.shape[1:])
                  for net in (enc, proj) for layer in net.layers)
  params = enc.count_params() + proj.count_params()
  print(f'layer-output values per image: {per_image / 1e6:.1f}M; parameters {params / 1e6:.1f}M')
  print('| slice | chips | images per chip | layer outputs, bf16 | fp32 |')
  print('|---|---|---|---|---|')
  for name, chips in (('v4-8', 4), ('v4-32', 16), ('v4-64', 32)):
    b = BATCH // chips
    gib = [per_image * 2 * b * nbytes / 2 ** 30 for nbytes in (2, 4)]
    print(f'| {name} | {chips} | {b} | {gib[0]:.0f} GiB | {gib[1]:.0f} GiB |')
  print(f'weights + LARS momentum (fp32): {params * 8 / 2 ** 30:.2f} GiB; '
        f'with an EMA target: {params * 12 / 2 ** 30:.2f} GiB')


if __name__ == '__main__':
  main()
