"""The README figure: one synthetic val sequence, ground truth, and the predictions with and without memory.

    python train.py --config=configs/synthetic.py --workdir=/tmp/syn_ma
    python train.py --config=configs/synthetic.py --workdir=/tmp/syn_plain --config.model.encoder=plain
    python benchmarks/synthetic_figure.py --ma=/tmp/syn_ma --plain=/tmp/syn_plain --out=docs/synthetic_memory.png

Rows: frames, ground truth, MA-ResNet (memory), plain ResNet (no memory); columns: the frames of the first val
sequence in time order. Objects show their class colour only on reveal frames; on grey frames only the model
with memory can still name them.
"""
import argparse

import numpy as np

from ma_resnet import predict
from ma_resnet.data import make_sequences
from ma_resnet.visualize import colorize, save_png


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--ma', required=True, help='workdir of the MA run')
  parser.add_argument('--plain', required=True, help='workdir of the plain run')
  parser.add_argument('--out', default='docs/synthetic_memory.png')
  parser.add_argument('--sequence', type=int, default=0)
  parser.add_argument('--scale', type=int, default=2, help='pixel repetition of the 64x64 frames')
  args = parser.parse_args()

  runs = {name: predict.load_model(workdir=path) for name, path in (('ma', args.ma), ('plain', args.plain))}
  sequences = make_sequences(runs['ma'].config.data, runs['ma'].config.eval_split)
  frames = [sequences.read_frame(args.sequence, p) for p in range(sequences.sequence_length(args.sequence))]
  images = [f.image for f in frames]
  palette = runs['ma'].palette
  rows = [np.concatenate(images, axis=1),
          np.concatenate([colorize(np.where(f.label == 255, 0, f.label), palette) for f in frames], axis=1)]
  for run in runs.values():
    predictions = predict.predict_video(run.model, run.variables, images, mean=run.mean, std=run.std,
                                        normalize=run.normalize)
    rows.append(np.concatenate([colorize(p.labels, palette) for p in predictions], axis=1))
  gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
  figure = np.concatenate(sum(([row, gap] for row in rows), [])[:-1], axis=0)
  figure = figure.repeat(args.scale, axis=0).repeat(args.scale, axis=1)
  print(save_png(args.out, figure))


if __name__ == '__main__':
  main()
