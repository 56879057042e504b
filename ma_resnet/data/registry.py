"""The datasets `data.name` may name: the `DatasetSpec` of each dataset module, registered here and only here.

    spec = registry.get('camvid')       # ConfigError listing the registered names when there is no such dataset
    registry.names()                    # ('synthetic', 'camvid', 'vspw', 'cityscapes')
    registry.register(SPEC)             # one more (a test's generated dataset, a project's own)

Adding a dataset: ARCHITECTURE.md, "Adding a dataset".
"""
from __future__ import annotations

from ma_resnet.data import camvid, cityscapes, synthetic, vspw
from ma_resnet.data.spec import DatasetSpec
from ma_resnet.errors import ConfigError

DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  """Makes `spec.name` a valid `data.name`; a name registered twice is a bug."""
  if spec.name in DATASETS:
    raise ValueError(f'dataset {spec.name!r} is already registered')
  DATASETS[spec.name] = spec
  return spec


def names() -> tuple[str, ...]:
  return tuple(DATASETS)


def get(name: str) -> DatasetSpec:
  """The spec of dataset `name`; ConfigError naming the registered ones otherwise."""
  if name not in DATASETS:
    raise ConfigError(f'invalid config: data.name must be one of {names()}, got {name!r}')
  return DATASETS[name]


for _module in (synthetic, camvid, vspw, cityscapes):
  register(_module.SPEC)
