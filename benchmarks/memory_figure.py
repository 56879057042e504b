"""README figures: frames of one val sequence, ground truth, and the predictions with and without memory.

    python benchmarks/memory_figure.py --ma=/tmp/syn_ma --plain=/tmp/syn_plain --out=docs/synthetic_memory.png
    python benchmarks/memory_figure.py --ma=workdirs/camvid_cpu_ma --plain=workdirs/camvid_cpu_plain \
        --checkpoint=latest --every=25 --scale=0.5 --out=docs/camvid_cpu_val.png

Rows: frames, ground truth, MA-ResNet (memory), plain ResNet (no memory); columns: every `--every`-th frame of
the sequence in time order. Both models stream the whole sequence with their memory (the run's
`data.eval_size` as input size, predictions at the frames' size), so a column shows exactly what evaluation
scores. Void pixels of the ground truth are drawn in `visualize.IGNORE_COLOR`.
"""
import argparse

import numpy as np

from ma_resnet import inference
from ma_resnet.runs import load_run
from ma_resnet.data import make_sequences
from ma_resnet.visualize import colorize, resize_image, save_png


def scaled(image: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
  if scale == 1:
    return image
  if scale == int(scale):
    return image.repeat(int(scale), axis=0).repeat(int(scale), axis=1)
  h, w = (int(round(s * scale)) for s in image.shape[:2])
  if nearest:
    rows = (np.arange(h) * image.shape[0] // h)[:, None]
    cols = (np.arange(w) * image.shape[1] // w)[None, :]
    return image[rows, cols]
  return resize_image(image, (h, w))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--ma', required=True, help='workdir of the MA run')
  parser.add_argument('--plain', required=True, help='workdir of the plain run')
  parser.add_argument('--checkpoint', default='best', help="'best', 'latest' or a step, for both runs")
  parser.add_argument('--out', default='docs/synthetic_memory.png')
  parser.add_argument('--sequence', type=int, default=0)
  parser.add_argument('--every', type=int, default=1, help='show every N-th frame of the sequence')
  parser.add_argument('--scale', type=float, default=2, help='display scale of the frames (2: 64x64 -> 128)')
  args = parser.parse_args()

  runs = {name: load_run(path, args.checkpoint) for name, path in (('ma', args.ma), ('plain', args.plain))}
  sequences = make_sequences(runs['ma'].config.data, runs['ma'].config.eval_split)
  frames = [sequences.read_frame(args.sequence, p) for p in range(sequences.sequence_length(args.sequence))]
  shown = range(0, len(frames), args.every)
  images = [f.image for f in frames]
  palette = inference.input_settings(runs['ma'].config).palette

  def row(pictures, nearest=False):
    return np.concatenate([scaled(pictures[i], args.scale, nearest) for i in shown], axis=1)

  rows = [row(images), row([colorize(f.label, palette) for f in frames], nearest=True)]
  for run in runs.values():
    settings = inference.input_settings(run.config)
    predictions = list(inference.predict_video(run.model, run.variables, images, mean=settings.mean,
                                               std=settings.std, size=settings.eval_size,
                                               normalize=settings.normalize))
    rows.append(row([colorize(p.labels, palette) for p in predictions], nearest=True))
  gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
  figure = np.concatenate(sum(([r, gap] for r in rows), [])[:-1], axis=0)
  print(save_png(args.out, figure))


if __name__ == '__main__':
  main()
