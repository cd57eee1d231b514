"""Imports every module that registers a gin configurable, and nothing else.

A leaf only the entry points import (main, tests/conftest.py, bench), as Model Garden's
registry_imports: parsing a gin file needs every configurable registered, and no library
module needs to import the others for that (which is what made config <-> study a circle).

  run            train.py          build_model       model.py (+ methods/ settings)
  load_data      data.py           build_encoder     networks.py
  view_transforms augment.py       build_optimizer   optim.py
  linear_probe, knn_accuracy, offline_linear_eval   evaluate.py
  run_study      study.py
  transfer, fine_tune   transfer.py
"""

# pylint: disable=unused-import
from minc_tf import augment  # noqa: F401
from minc_tf import data  # noqa: F401
from minc_tf import evaluate  # noqa: F401
from minc_tf import model  # noqa: F401
from minc_tf import networks  # noqa: F401
from minc_tf import optim  # noqa: F401
from minc_tf import study  # noqa: F401
from minc_tf import train  # noqa: F401
from minc_tf import transfer  # noqa: F401
