"""Small display helpers for the Colab notebooks (`colab/`): images and metric curves, with or without matplotlib.

    show_images([frame, overlay], titles=['frame', 'prediction'])   # a grid, displayed in the notebook
    plot_metrics(read_jsonl('workdir/metrics.jsonl'), ['loss', 'accuracy', 'eval/miou'])

With matplotlib (as on Colab) the figures are matplotlib figures; without it they are drawn with Pillow and
displayed as PNG images (`IPython.display`), so the notebooks also run where only the project's dependencies are
installed. In a notebook they display and return None; elsewhere they return the figure / PIL image.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

_BACKGROUND = (255, 255, 255)
_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def have_matplotlib() -> bool:
  if os.environ.get('MA_RESNET_NO_MATPLOTLIB') == '1':  # to exercise the Pillow path
    return False
  try:
    import matplotlib  # noqa: F401  pylint: disable=unused-import
    return True
  except ImportError:
    return False


def in_notebook() -> bool:
  try:
    from IPython import get_ipython
  except ImportError:
    return False
  shell = get_ipython()
  return shell is not None and getattr(shell, 'kernel', None) is not None


def _display(obj):
  """Displays `obj` in a notebook (and returns None); elsewhere returns it."""
  if in_notebook():
    from IPython.display import display
    display(obj)
    return None
  return obj


def _to_uint8(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.rint(image * (255.0 if image.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return image


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, columns: int = 4,
               scale: int = 1, gap: int = 4) -> Image.Image:
  """The images (uint8 (H, W, 3), any sizes) in a grid with optional titles above them, as one PIL image."""
  images = [_to_uint8(i) for i in images]
  if scale > 1:
    images = [np.kron(i, np.ones((scale, scale, 1), np.uint8)) for i in images]
  columns = max(1, min(columns, len(images)))
  rows = math.ceil(len(images) / columns)
  cell_h = max(i.shape[0] for i in images)
  cell_w = max(i.shape[1] for i in images)
  title_h = 14 if titles else 0
  grid = Image.new('RGB', (columns * (cell_w + gap) + gap, rows * (cell_h + title_h + gap) + gap), _BACKGROUND)
  draw = ImageDraw.Draw(grid)
  for k, image in enumerate(images):
    r, c = divmod(k, columns)
    x, y = gap + c * (cell_w + gap), gap + r * (cell_h + title_h + gap)
    if titles:
      draw.text((x, y), str(titles[k])[: max(4, cell_w // 6)], fill=(0, 0, 0))
    grid.paste(Image.fromarray(image), (x, y + title_h))
  return grid


def show_images(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, columns: int = 4,
                size: float = 3.0):
  """Displays images in a grid (matplotlib when installed, else one PNG drawn with Pillow)."""
  images = list(images)
  if not images:
    return None
  if have_matplotlib():
    import matplotlib.pyplot as plt
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    aspect = images[0].shape[0] / images[0].shape[1]
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * aspect * rows + 0.4 * rows),
                             squeeze=False)
    for k, ax in enumerate(axes.ravel()):
      ax.axis('off')
      if k < len(images):
        ax.imshow(_to_uint8(images[k]), interpolation='nearest')
        if titles:
          ax.set_title(str(titles[k]), fontsize=9)
    fig.tight_layout()
    if in_notebook():
      plt.show()
      return None
    return fig
  scale = max(1, int(round(160 / max(i.shape[1] for i in images))))  # small frames are enlarged
  grid = image_grid(images, titles, columns, scale=scale)
  return _display(grid)


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  points = [(r['step'], r[key]) for r in records if key in r and isinstance(r[key], (int, float))]
  if not points:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps, float), np.asarray(values, float)


def _pil_line_chart(steps, values, title: str, width: int = 320, height: int = 200) -> Image.Image:
  image = Image.new('RGB', (width, height), _BACKGROUND)
  draw = ImageDraw.Draw(image)
  left, right, top, bottom = 44, width - 10, 18, height - 22
  draw.text((left, 2), title, fill=(0, 0, 0))
  draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
  finite = np.isfinite(values)
  if finite.any():
    steps, values = steps[finite], values[finite]
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
      lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = float(steps.min()), float(steps.max())
    s1 = s1 if s1 > s0 else s0 + 1
    xs = left + (steps - s0) / (s1 - s0) * (right - left)
    ys = bottom - (values - lo) / (hi - lo) * (bottom - top)
    points = list(zip(xs.tolist(), ys.tolist()))
    if len(points) > 1:
      draw.line(points, fill=_COLORS[0], width=2)
    for x, y in points[-1:] if len(points) > 1 else points:
      draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_COLORS[1])
    draw.text((2, top), f'{hi:.3g}', fill=(0, 0, 0))
    draw.text((2, bottom - 10), f'{lo:.3g}', fill=(0, 0, 0))
    draw.text((left, bottom + 4), f'step {s0:g}', fill=(0, 0, 0))
    draw.text((right - 60, bottom + 4), f'{s1:g}', fill=(0, 0, 0))
  else:
    draw.text((left + 8, (top + bottom) // 2), 'no data yet', fill=(120, 120, 120))
  return image


def plot_metrics(records: Sequence[dict], keys: Sequence[str] = ('loss', 'accuracy', 'eval/miou')):
  """One curve per key over the `step` of metrics.jsonl records (missing keys show an empty panel)."""
  if have_matplotlib():
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
      steps, values = _series(records, key)
      ax.plot(steps, values, marker='o' if len(steps) < 30 else None)
      if not len(steps):
        ax.text(0.5, 0.5, 'no data yet', ha='center', va='center', color='grey', transform=ax.transAxes)
      ax.set_title(key)
      ax.set_xlabel('step')
      ax.grid(alpha=0.3)
    fig.tight_layout()
    if in_notebook():
      plt.show()
      return None
    return fig
  charts = [_pil_line_chart(*_series(records, key), key) for key in keys]
  strip = Image.new('RGB', (sum(c.width for c in charts), max(c.height for c in charts)), _BACKGROUND)
  x = 0
  for chart in charts:
    strip.paste(chart, (x, 0))
    x += chart.width
  return _display(strip)
