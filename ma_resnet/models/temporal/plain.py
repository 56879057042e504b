"""No temporal module: every frame is segmented on its own (the per-frame baseline of every system)."""
from __future__ import annotations

from typing import ClassVar

from ma_resnet.models.temporal.base import TemporalModule


class Plain(TemporalModule):
  """Carries nothing: empty state, maps handed to the head unchanged, no frame enhanced."""
  has_state: ClassVar[bool] = False
