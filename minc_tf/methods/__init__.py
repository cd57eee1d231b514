"""The registry of methods: a method is one module here and one line below.

  from minc_tf import methods
  methods.get('minc')          # the class; build_model instantiates it
  methods.names()              # every registered method, in registry order
  methods.settings()           # {name: Setting} of every method's settings (build_model.<name>)
"""

from minc_tf.methods import base  # noqa: F401  (methods.base.Method, Setting)
from minc_tf.methods import byol
from minc_tf.methods import minc
from minc_tf.methods import simclr
from minc_tf.methods import spectral

REGISTRY = {}


def register(cls):
  if cls.NAME in REGISTRY:
    raise ValueError(f'two methods are named {cls.NAME!r}')
  for name, setting in cls.SETTINGS.items():
    other = settings().get(name)
    if other is not None and other is not setting:
      raise ValueError(f'{cls.NAME} declares its own {name!r}; a setting of one name is one '
                       'Setting object (share it from methods/base.py)')
  REGISTRY[cls.NAME] = cls
  return cls


def get(name):
  return REGISTRY[name]


def names():
  return tuple(REGISTRY)


def settings():
  out = {}
  for cls in REGISTRY.values():
    out.update(cls.SETTINGS)
  return out


register(minc.Minc)
register(spectral.Spectral)
register(simclr.SimCLR)
register(byol.Byol)
register(byol.LinearByol)
register(byol.SimSiam)
