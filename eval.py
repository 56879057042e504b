r"""Evaluates a training run: streams every sequence of a split with memory, reports mIoU and per-class IoU.

    python eval.py --workdir=/tmp/syn_ma [--split=val] [--checkpoint=best|latest|STEP] [--overlays=8]
        [--overlay_stride=1] [--native_labels] [--vc_lengths=8,16] [--vc_corrected]
        [--mode=whole|slide --crop=H,W --stride=H,W] [--flip] [--scales=0.75,1.0,1.25] [--frame_list=tmanet]

Restores the best checkpoint by validation mIoU (or the latest), with the config it was trained with, and
writes <workdir>/eval_<split>.json (mIoU, per-class IoU, pixel accuracy, frames/s, confusion matrix, the video
metrics mVC_n and temporal consistency: docs/compare.md) and, with
--overlays=N, N PNG panels (frame | prediction overlay | ground truth) under <workdir>/overlays/<split>/.
The protocol flags score a run another way than its config says (docs/protocols.md), e.g. TMANet's CamVid test:
    python eval.py --workdir=RUN --split=test --mode=slide --crop=640,640 --stride=512,512 --frame_list=tmanet
"""
import re

from absl import app, flags

from ma_resnet import cli, files

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run folder written by train.py.')
flags.DEFINE_string('split', None, 'Split to evaluate (default: the run config\'s eval_split).')
flags.DEFINE_string('checkpoint', 'best', "'best' (by validation mIoU), 'latest' or a step number.")
flags.DEFINE_integer('overlays', 0, 'Save prediction overlays of this many frames.')
flags.DEFINE_integer('overlay_stride', 1, 'Overlays of every N-th frame of the split (1: consecutive frames).')
flags.DEFINE_bool('native_labels', None, "Score at the labels' native size when data.eval_size resizes the "
                  "frames (logits resized to the labels); default: the run config's data.eval_native_labels.")
flags.DEFINE_integer('eval_batch_size', None, 'Sequences streamed side by side (default: the run config\'s).')
flags.DEFINE_string('data_root', None, 'Override data.root of the run config.')
flags.DEFINE_list('vc_lengths', None, 'n of the video consistency mVC_n, e.g. 8,16 (default: the run config\'s '
                  'eval_vc_lengths; a sequence of n frames or fewer has no window). See docs/compare.md.')
flags.DEFINE_bool('vc_corrected', None, 'Also report mVC_n in its corrected form (default: the run config\'s '
                  'eval_vc_corrected).')
flags.DEFINE_enum('mode', None, ['whole', 'slide'], "Evaluation protocol (default: the run config's eval_mode): "
                  'whole frames, or sliding windows of --crop every --stride pixels (ma_resnet/protocols.py).')
flags.DEFINE_list('crop', None, "H,W of the sliding windows (default: the run config's eval_crop).")
flags.DEFINE_list('stride', None, "H,W between window starts (default: the run config's eval_stride).")
flags.DEFINE_bool('flip', None, "Also score the horizontally flipped frames (default: the run config's eval_flip).")
flags.DEFINE_list('scales', None, "Ratios of the evaluation size, e.g. 0.75,1.0,1.25 (default: the run config's "
                  'eval_scales).')
flags.DEFINE_string('frame_list', None, "CamVid: '' (the split's list) or 'tmanet' (TMANet's lists: the 232-frame "
                    "test list); default: the run config's data.camvid.frame_list.")
flags.DEFINE_enum('distributed', 'auto', ['auto', 'yes', 'no'], 'Start jax.distributed (auto: when a '
                  'multi-process launch is given or detected).')
cli.define_distributed_flags()
flags.mark_flags_as_required(['workdir'])
EVAL_FLAGS = ('workdir', 'split', 'checkpoint', 'overlays', 'overlay_stride', 'native_labels', 'eval_batch_size',
              'data_root', 'vc_lengths', 'vc_corrected', 'mode', 'crop', 'stride', 'flip', 'scales', 'frame_list')  # every process of a multi-process evaluation must be given the same


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}', cli.EXIT_USAGE)
  from ma_resnet import logging_utils
  logging_utils.quiet_console(verbose=FLAGS['verbosity'].present)
  if not re.fullmatch(r'best|latest|\d+', FLAGS.checkpoint):
    cli.fail(f"--checkpoint must be 'best', 'latest' or a step number, got {FLAGS.checkpoint!r}", cli.EXIT_USAGE)
  if FLAGS.overlay_stride < 1 or FLAGS.overlays < 0:
    cli.fail('--overlays must be >= 0 and --overlay_stride >= 1', cli.EXIT_USAGE)
  if problem := files.utf8_problem(FLAGS.workdir):
    cli.fail(f'--workdir {problem}', cli.EXIT_USAGE)
  if FLAGS.vc_lengths is not None and not all(n.strip().isdigit() and int(n) >= 1 for n in FLAGS.vc_lengths):
    cli.fail(f'--vc_lengths must be positive integers, got {",".join(FLAGS.vc_lengths)}', cli.EXIT_USAGE)
  for name in ('crop', 'stride'):
    value = FLAGS[name].value
    if value is not None and (len(value) != 2 or not all(v.strip().isdigit() and int(v) >= 1 for v in value)):
      cli.fail(f'--{name} must be H,W (two positive integers), got {",".join(value)}', cli.EXIT_USAGE)
  try:
    scales = None if FLAGS.scales is None else [float(s) for s in FLAGS.scales]
  except ValueError:
    cli.fail(f'--scales must be numbers, e.g. 0.75,1.0,1.25, got {",".join(FLAGS.scales)}', cli.EXIT_USAGE)
  pair = lambda value: None if value is None else [int(v) for v in value]

  def run():
    import os
    from ma_resnet import evaluation, parallel
    cli.start_distributed(FLAGS, FLAGS.distributed)
    import jax
    parallel.check_same_launch({'flags': {name: FLAGS[name].value for name in EVAL_FLAGS}})
    metrics, report = evaluation.evaluate_run(
        FLAGS.workdir, split=FLAGS.split, checkpoint=FLAGS.checkpoint, overlays=FLAGS.overlays,
        overlay_stride=FLAGS.overlay_stride, eval_batch_size=FLAGS.eval_batch_size, data_root=FLAGS.data_root,
        native_labels=FLAGS.native_labels, vc_corrected=FLAGS.vc_corrected,
        vc_lengths=None if FLAGS.vc_lengths is None else [int(n) for n in FLAGS.vc_lengths],
        mode=FLAGS.mode, crop=pair(FLAGS.crop), stride=pair(FLAGS.stride), flip=FLAGS.flip, scales=scales,
        frame_list=FLAGS.frame_list)
    if jax.process_index() != 0:
      return
    print(f'{report["dataset"]} {report["split"]}, checkpoint step {report["checkpoint"]["step"]} '
          f'({report["checkpoint"]["which"]})')
    print(metrics.table())
    if report.get('report_path'):
      print(f'report: {report["report_path"]}')
    if report['overlays']:
      print(f'overlays: {len(report["overlays"])} PNGs in {report["overlays"][0].rsplit("/", 1)[0]}', flush=True)
    not_written = list(report.get('not_written', ()))
    try:
      logging_utils.log_to_file(os.path.join(FLAGS.workdir, 'eval.log'))  # the library log of a finished run
    except OSError as e:
      not_written.append(f'{e.filename}: {e.strerror}')
    if not_written:  # a read-only workdir: the results are above, the files could not be written
      cli.fail(f'could not write {"; ".join(not_written)} (the results above are complete)', cli.EXIT_CHECKPOINT)

  cli.run_guarded(run)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.make_flags_parser('config'))
