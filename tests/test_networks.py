"""networks.py: ResNet sizes against the published parameter counts, feature widths, heads."""

import keras
import numpy as np
import pytest

from minc_tf import networks


def trainable_params(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize('depth,expected', [
    # torchvision's resnet18 / resnet50 parameter counts (11,689,512 / 25,557,032) less the
    # 1000-way classifier (512*1000+1000 / 2048*1000+1000): an independent reference.
    (18, 11_689_512 - 513_000),
    (50, 25_557_032 - 2_049_000),
])
def test_imagenet_resnet_matches_published_parameter_count(depth, expected):
  encoder = networks.build_encoder((224, 224, 3), depth=depth)
  assert trainable_params(encoder) == expected
  assert encoder.output_shape == (None, 512 if depth == 18 else 2048)


def test_width_multiplier_and_small_image_stem():
  wide = networks.build_encoder((64, 64, 3), depth=50, width_multiplier=2)
  assert wide.output_shape == (None, 4096)
  small = networks.build_encoder((28, 28, 1), depth=18, small_images=True,
                                 stage_blocks=(1, 1, 1, 1), base_width=24)
  assert small.output_shape == (None, 192)  # base_width * 2^(stages - 1), basic blocks
  # A stride-1 3x3 stem: the first stage runs at the full 28 x 28.
  assert small.get_layer('stem_conv').output.shape[1:3] == (28, 28)


def test_mlp_head_shape_and_sync_bn():
  head = networks.build_mlp(32, hidden_dims=(64, 64), output_dim=16, sync_bn=True)
  assert head.output_shape == (None, 16)
  bns = [l for l in head.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and all(l.synchronized for l in bns)
