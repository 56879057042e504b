r"""Trains a video segmentation model (backbone x temporal module x head) and evaluates it.

    python train.py --config=configs/synthetic.py --workdir=/tmp/syn_ma
    python train.py --config=configs/camvid.py --workdir=runs/camvid_ma --config.init_from=/path/to/r50_converted

Any config field can be overridden: --config.optimizer.lr=0.01 --config.model.temporal=plain.
Running the same command again resumes from the workdir's latest checkpoint (state, data position).
The workdir receives config.json, metrics.jsonl, TensorBoard events, checkpoints/ and train_result.json.
Data parallel over all local devices (and all hosts of a multi-process launch; see ma_resnet/parallel.py).
Exit codes: 0 done, 2 bad flags/config, 3 data missing, 4 checkpoint mismatch or the workdir in use by another
run (`<workdir>/train.lock`), 5 NaN/inf loss, 6 multi-process: a peer stopped or the processes cannot start together.
The console shows the progress bar, each validation, where things were written, warnings and errors; the
library log goes to <workdir>/train.log (--verbosity=0 shows it on the console too).
"""
from absl import app, flags
from ml_collections import config_flags

from ma_resnet import cli, files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file (e.g. configs/synthetic.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run folder: checkpoints, logs, config.json. Resumes from it if it exists.')
flags.DEFINE_bool('progress', True, 'Show a tqdm progress bar.')
flags.DEFINE_bool('allow_new_batch_size', False, 'Resume a run with another batch_size than it was trained with.')
cli.define_distributed_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}', cli.EXIT_USAGE)
  from ma_resnet import logging_utils
  logging_utils.quiet_console(verbose=FLAGS['verbosity'].present)
  if problem := files.utf8_problem(FLAGS.workdir):
    cli.fail(f'--workdir {problem}', cli.EXIT_USAGE)
  config = cli.loaded_config(FLAGS)

  def run():
    import os
    from ma_resnet import loop
    cli.start_distributed(FLAGS, config.distributed)
    result = loop.train_and_evaluate(config, FLAGS.workdir, progress=FLAGS.progress,
                                     allow_new_batch_size=FLAGS.allow_new_batch_size)
    workdir = os.path.abspath(FLAGS.workdir)
    import jax
    if jax.process_index() != 0:
      return
    if result.eval_metrics:
      print(f'done: step {result.step}, {config.eval_split} mIoU {result.eval_metrics["miou"]:.4f}, '
            f'{result.seconds:.0f} s', flush=True)
    else:
      print(f'done: step {result.step}, {result.seconds:.0f} s', flush=True)
    print(f'checkpoints: {os.path.join(workdir, "checkpoints")}\n'
          f'metrics: {os.path.join(workdir, logging_utils.METRICS_FILE)} (TensorBoard events beside it), '
          f'result: {os.path.join(workdir, loop.RESULT_FILE)}, log: {os.path.join(workdir, logging_utils.LOG_FILE)}',
          flush=True)

  cli.run_guarded(run)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.make_flags_parser('config'))
