"""Shared test helpers: where `../shared` (papers, CamVid, reference outputs) lives."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


@pytest.fixture(scope='session')
def shared_dir() -> Path:
  if not SHARED.is_dir():
    pytest.skip(f'{SHARED} is absent: the checks against shared data and reference outputs need it')
  return SHARED
