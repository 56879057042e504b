"""No temporal module: every frame is segmented on its own (the per-frame baseline of every system)."""
from __future__ import annotations

from typing import ClassVar, Mapping

from ma_resnet.models.temporal.base import BuildContext, TemporalModule


class Plain(TemporalModule):
  """Carries nothing: empty state, maps handed to the head unchanged, no frame enhanced."""
  has_state: ClassVar[bool] = False

  @classmethod
  def from_config(cls, options: Mapping | None, context: BuildContext) -> 'Plain':
    del options, context  # nothing to choose
    return cls()
