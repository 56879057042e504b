"""Streaming evaluation: every sequence of a split, frame by frame in time order, memory carried across frames.

    evaluator = Evaluator(model, data_config, 'val', lanes=4, mesh=mesh)
    metrics = evaluator.evaluate(variables)          # EvalMetrics: miou, per_class_iou, pixel_accuracy, ...

How it runs. `lanes` sequences are streamed side by side (a batch of `lanes` frames per step; lane g plays
sequences g, g + lanes, g + 2 lanes, ...). Each step calls the jitted `model.step(frame, memory, reset)`; `reset`
is the frame's `sequence_start`, so a lane's memory is cleared whenever it starts a new sequence, exactly as
when one sequence is played alone. A lane that has run out of frames is fed a blank, unscored frame.
`streaming.FrameStream` pairs every prediction with its own frame (and label), also for a model that returns it
steps later (STF needs the next frame). With several devices the lanes are split over them (the memory too);
with several processes each process reads and scores its own lanes.

Scoring. The arg-max predictions come back to the host, and for every labelled frame the confusion matrix
(ground truth x prediction, int64, classes 0..K-1, label 255 excluded) is accumulated with numpy. From it:
IoU_k = TP / (TP + FP + FN) (NaN for a class absent from both ground truth and prediction, left out of the
mean), mIoU = mean of the defined IoU_k, pixel accuracy = trace / total. Frames per second count every frame
streamed (labelled or not) per second of wall time, excluding the first step (compilation).
The same predictions feed `video_metrics.VideoMetrics` (`EvalMetrics.video`): mVC_n of densely labelled
splits (VSPW's mean video consistency, `eval_vc_lengths`; absent with sparse labels) and the label-free temporal
consistency. `video_consistency` (re-exported here) is mVC_n's per-window accuracies of one video.

`evaluate_run(workdir, ...)` is `eval.py`: restore the best (or latest) checkpoint of a run
(`runs.load_run`), evaluate, write `eval_<split>.json`, overlays and a per-class table. This module
never imports the trainer: the streamed step is `inference.segment_frames`, shared with video inference.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ma_resnet import checkpoints, inference, parallel, protocols, runs, streaming, video_metrics, visualize
from ma_resnet import data as data_lib
from ma_resnet.data import DataError
from ma_resnet.errors import ConfigError
from ma_resnet.files import atomic_write_text
from ma_resnet.protocols import EvalProtocol
from ma_resnet.video_metrics import VideoMetricOptions, video_consistency  # noqa: F401  (re-exported)

IGNORE_INDEX = data_lib.IGNORE_INDEX


# ---------------------------------------------------------------------------------------------------------
# Confusion matrix and scores (numpy).


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
  """int64 (K, K): entry [i, j] counts pixels of ground truth i predicted as j; ignored pixels skipped.

  Labels outside 0..K-1 other than `ignore_index` are a DataError (they would be silently dropped otherwise).
  """
  labels = np.asarray(labels).ravel().astype(np.int64)
  predictions = np.asarray(predictions).ravel().astype(np.int64)
  keep = labels != ignore_index
  labels, predictions = labels[keep], predictions[keep]
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f'label values outside 0..{num_classes - 1} (and not {ignore_index}): '
                     f'{sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))}')
  if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
    raise ValueError(f'prediction values outside 0..{num_classes - 1}')
  return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes
                     ).reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
  """float64 (K,): TP / (TP + FP + FN); NaN where the class is in neither ground truth nor prediction."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  iou = iou_per_class(confusion)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan')


def pixel_accuracy(confusion: np.ndarray) -> float:
  total = confusion.sum()
  return float(np.trace(confusion) / total) if total else float('nan')


@dataclasses.dataclass
class EvalMetrics:
  """The result of one evaluation pass."""
  confusion: np.ndarray
  class_names: Sequence[str]
  frames: int
  labelled_frames: int
  seconds: float
  frames_per_second: float
  split: str = ''
  # Models that carry a memory: `model.frame_kinds` (THA: ('key', 'non-key')) and the scores split by it:
  # kind_confusion (2, K, K) int64 (index 1: the output used the memory), kind_frames / kind_labelled (2,).
  frame_kinds: tuple[str, str] | None = None
  kind_confusion: np.ndarray | None = None
  kind_frames: tuple[int, int] = (0, 0)
  kind_labelled: tuple[int, int] = (0, 0)
  # Video metrics (`video_metrics.VideoMetrics.results`): mVC_n (absent with sparse labels), temporal consistency.
  video: dict[str, Any] = dataclasses.field(default_factory=dict)
  # How the frames were scored (`protocols.EvalProtocol.to_json()` + split + frame list).
  protocol: dict[str, Any] | None = None

  @property
  def per_class_iou(self) -> np.ndarray:
    return iou_per_class(self.confusion)

  @property
  def miou(self) -> float:
    return mean_iou(self.confusion)

  @property
  def pixel_accuracy(self) -> float:
    return pixel_accuracy(self.confusion)

  def kinds(self) -> list[dict[str, Any]]:
    """Per kind of frame (warm-up / with memory; THA: key / non-key): name, frames, labelled, mIoU."""
    if not self.frame_kinds or self.kind_confusion is None:
      return []
    return [{'kind': name, 'frames': int(self.kind_frames[i]), 'labelled_frames': int(self.kind_labelled[i]),
             'miou': mean_iou(self.kind_confusion[i])} for i, name in enumerate(self.frame_kinds)]

  def scalars(self) -> dict[str, float]:
    """mIoU, pixel accuracy, frames/s, and the mIoU of each kind of frame with labels ('miou_key', ...)."""
    kinds = {'miou_' + k['kind'].replace('-', '_').replace(' ', '_'): k['miou'] for k in self.kinds()
             if k['labelled_frames']}
    return {'miou': self.miou, 'pixel_accuracy': self.pixel_accuracy,
            'frames_per_second': self.frames_per_second, **kinds, **video_metrics.scalars(self.video)}

  def to_json(self) -> dict[str, Any]:
    nan_to_none = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else x
    return {
        'split': self.split,
        'miou': nan_to_none(self.miou),
        'pixel_accuracy': nan_to_none(self.pixel_accuracy),
        'per_class_iou': {name: nan_to_none(float(v)) for name, v in zip(self.class_names, self.per_class_iou)},
        'frames': self.frames,
        'labelled_frames': self.labelled_frames,
        'seconds': self.seconds,
        'frames_per_second': self.frames_per_second,
        'confusion_matrix': self.confusion.tolist(),
        'class_names': list(self.class_names),
        'frame_kinds': [{**k, 'miou': nan_to_none(k['miou'])} for k in self.kinds()],
        'video_metrics': self.video,
        'protocol': self.protocol,
    }

  def table(self) -> str:
    """A per-class text table (IoU, ground-truth pixels), then mIoU and pixel accuracy."""
    iou = self.per_class_iou
    gt = self.confusion.sum(1)
    width = max([len('class')] + [len(n) for n in self.class_names])
    lines = [f'{"class":<{width}}  {"IoU":>7}  {"GT pixels":>12}', '-' * (width + 23)]
    if self.protocol and protocols.describe(self.protocol) != 'whole frames':
      lines.insert(0, f'protocol: {protocols.describe(self.protocol)}')
    for name, v, n in zip(self.class_names, iou, gt):
      shown = '    n/a' if np.isnan(v) else f'{100 * v:6.2f}%'
      lines.append(f'{name:<{width}}  {shown:>7}  {int(n):>12d}')
    lines.append('-' * (width + 23))
    lines.append(f'{"mIoU":<{width}}  {100 * self.miou:6.2f}%')
    lines.append(f'{"pixel accuracy":<{width}}  {100 * self.pixel_accuracy:6.2f}%')
    lines.append(f'{self.frames} frames ({self.labelled_frames} labelled) in {self.seconds:.1f} s, '
                 f'{self.frames_per_second:.1f} frames/s')
    for k in self.kinds():
      score = 'n/a' if math.isnan(k['miou']) else f'{100 * k["miou"]:.2f}%'
      lines.append(f'{k["kind"]} frames: {k["frames"]} ({k["labelled_frames"]} labelled), mIoU {score}')
    return '\n'.join(lines + video_metrics.table_lines(self.video))


# ---------------------------------------------------------------------------------------------------------
# Streaming.


@dataclasses.dataclass
class FramePrediction:
  """What the per-frame callback receives (host numpy)."""
  sequence: str
  sequence_index: int
  frame_index: int
  frame_number: int
  frames: np.ndarray        # (H, W, 3) as the model saw it (normalised float32)
  label: np.ndarray         # (H, W) int32, 255 = ignore
  labelled: bool
  prediction: np.ndarray    # (H, W) int32


def frame_list(data_config) -> str:
  """The frame list a split is read with ('' = the split's own list; CamVid: `data.camvid.frame_list`)."""
  return str((data_config.get('camvid') or {}).get('frame_list', '')) if data_config.get('name') == 'camvid' else ''


def _lane_lengths(sequences, lanes: int) -> list[int]:
  return [sum(sequences.sequence_length(i) for i in range(g, sequences.num_sequences, lanes))
          for g in range(lanes)]


class Evaluator:
  """Streams a split through `model.step` and scores it (see the module docstring)."""

  def __init__(self, model, data_config, split: str, *, lanes: int = 1, mesh=None,
               class_names: Sequence[str] | None = None, video_options: VideoMetricOptions | None = None,
               protocol: EvalProtocol | None = None):
    self.model = model
    self.protocol = protocol or protocols.WHOLE  # windows / flips / scales (`ma_resnet.protocols`)
    self.video_options = video_options  # mVC lengths and form (None: the defaults)
    self.data_config = data_config
    self.split = split
    self.mesh = mesh or parallel.make_mesh()
    devices = self.mesh.devices.size
    self.lanes = int(lanes)
    if devices > 1 and self.lanes % devices:
      raise ConfigError(f'evaluation lanes ({self.lanes}) must be a multiple of the {devices} devices')
    if self.lanes % jax.process_count():
      raise ConfigError(f'evaluation lanes ({self.lanes}) must be a multiple of the {jax.process_count()} '
                        'processes')
    self.num_classes = data_lib.num_classes(data_config)
    self.class_names = tuple(class_names or data_lib.class_names(data_config))
    # A single lane on several devices is replicated; otherwise lanes are split over the devices.
    self._batch_sharding = (parallel.data_sharding(self.mesh) if devices > 1
                            else parallel.replicated(self.mesh))
    self._replicated = parallel.replicated(self.mesh)
    self._step_fns = {}
    self._memory_fns = {}

  def _step(self, variables, frames, memory, reset, label_size: tuple[int, int]):
    """(predictions int32 (lanes, *label_size), memory, enhanced (lanes,) bool): one streamed frame per lane.

    Logits are resized (bilinear) to `label_size` when the labels are larger or smaller than the frames
    (`data.eval_native_labels`). The plain protocol is `inference.segment_frames`; any other runs every view of
    the frame as a lane of its own (`inference.segment_views`) and takes the arg-max of the combined scores.
    """
    image_size = tuple(frames.shape[1:3])
    key = (label_size, image_size)
    fn = self._step_fns.get(key)
    if fn is None:
      sharding = self._batch_sharding
      if self.protocol.plain:
        step = functools.partial(inference.segment_frames, self.model, out_size=label_size)
      else:
        segment = functools.partial(inference.segment_views, self.model, protocols.plan(self.protocol, image_size),
                                    out_size=label_size)

        def step(variables, frames, memory, reset):
          scores, memory, enhanced = segment(variables, frames, memory, reset)
          return jnp.argmax(scores, axis=-1).astype(jnp.int32), memory, enhanced
      fn = jax.jit(step, in_shardings=(self._replicated, sharding, sharding, sharding),
                   out_shardings=(sharding, sharding, sharding))
      self._step_fns[key] = fn
    return fn(variables, frames, memory, reset)

  def _empty_memory(self, image_size: tuple[int, int]):
    """The empty memory of `lanes` streams of frames of `image_size`; under a non-plain protocol one memory per
    scale, of V_s·lanes views of its window size."""
    fn = self._memory_fns.get(image_size)
    if fn is None:
      if self.protocol.plain:
        init = lambda: self.model.init_memory(self.lanes, image_size)
      else:
        streams = protocols.plan(self.protocol, image_size)
        init = lambda: tuple(self.model.init_memory(self.lanes * views.num_views, views.window_size)
                             for views in streams)
      fn = jax.jit(init, out_shardings=self._batch_sharding)
      self._memory_fns[image_size] = fn
    return fn()

  def _local_lanes(self) -> range:
    per_process = self.lanes // jax.process_count()
    start = jax.process_index() * per_process
    return range(start, start + per_process)

  def evaluate(self, variables, *, callback: Callable[[FramePrediction], None] | None = None,
               max_frames: int | None = None) -> EvalMetrics:
    """Streams the split through `model.step` with `variables`; `callback` sees every local frame.

    max_frames: stop after this many steps (per lane), for quick checks; None = the whole split.
    """
    sequences = data_lib.make_sequences(self.data_config, self.split)
    lengths = _lane_lengths(sequences, self.lanes)
    ticks = max(lengths) if lengths else 0
    if max_frames is not None:
      ticks = min(ticks, int(max_frames))
    streams: list[Iterator | None] = []
    for g in self._local_lanes():
      if lengths[g]:
        streams.append(iter(data_lib.make_eval_stream(self.data_config, self.split, shard_index=g,
                                                       shard_count=self.lanes)))
      else:
        streams.append(None)

    confusion = np.zeros((2, self.num_classes, self.num_classes), np.int64)  # by kind: enhanced or not
    kind_counts = np.zeros((2, 2), np.int64)  # [enhanced][frames, labelled]
    video = video_metrics.VideoMetrics(self.num_classes, self.video_options, dataset=self.data_config.get('name'))
    image_size = None
    start = time.time()
    steady_start, steady_frames = None, 0

    def step(frames, memory, reset, due):
      """The jitted step on this process's lanes; logits resized to the size of the labels due (native labels)."""
      label_sizes = {tuple(it['labels'].shape[2:4]) for it in due if it is not None}
      if len(label_sizes) > 1:
        raise ConfigError(f'labels of different sizes {sorted(label_sizes)} in one evaluation step (native '
                          'labels): evaluate with eval_batch_size=1')
      label_size = label_sizes.pop() if label_sizes else tuple(frames.shape[1:3])
      global_frames = jax.make_array_from_process_local_data(self._batch_sharding, frames,
                                                              (self.lanes,) + frames.shape[1:])
      global_reset = jax.make_array_from_process_local_data(self._batch_sharding, reset, (self.lanes,))
      predictions, memory, enhanced = self._step(variables, global_frames, memory, global_reset, label_size)
      return (parallel.local_rows(predictions), parallel.local_rows(enhanced)), memory

    def score(paired):
      for lane, it, (prediction, enhanced) in paired:
        kind = int(bool(enhanced))
        label = it['labels'][0, 0]
        labelled = bool(it['labelled'][0, 0])
        kind_counts[kind] += (1, int(labelled))
        if labelled:
          confusion[kind] += confusion_matrix(label, prediction, self.num_classes)
        video.update(lane, int(it['sequence_index']), int(it['frame_index']), label, labelled, prediction)
        if callback is not None:
          callback(FramePrediction(sequence=str(it['sequence']), sequence_index=int(it['sequence_index']),
                                   frame_index=int(it['frame_index']),
                                   frame_number=int(it['frame_number']), frames=it['frames'][0, 0],
                                   label=label, labelled=labelled, prediction=prediction))

    # One frame per lane and step (None: a lane with nothing to play gets a blank, reset frame); the stream pairs
    # each prediction with its own frame, however late the model returns it.
    stream = streaming.FrameStream.of_model(self.model, step, lanes=len(streams))
    for tick in range(ticks):
      items = []
      for lane, source in enumerate(streams):
        item = next(source, None) if source is not None else None
        if item is None:
          streams[lane] = None
        items.append(item)
      real = [it for it in items if it is not None]
      sizes = {tuple(it['frames'].shape[2:4]) for it in real}
      if len(sizes) > 1:
        raise ConfigError(f'frames of different sizes {sorted(sizes)} in one evaluation step: set '
                          'data.eval_size to evaluate several sequences side by side, or eval_batch_size=1')
      size = sizes.pop() if sizes else image_size
      if size is None:  # this process has no frame at all at this step; any size works for the blanks
        size = tuple(int(s) for s in self.data_config.eval_size or self.data_config.crop_size)
      if size != image_size:
        if image_size is not None and not all(bool(it['sequence_start'][0, 0]) for it in real):
          raise DataError(f'frame size changed from {image_size} to {size} within a sequence')
        image_size = size
        score(stream.restart(self._empty_memory(image_size)))  # the frames of the old size come out first
      frames = np.zeros((len(items),) + image_size + (3,), np.float32)
      reset = np.ones((len(items),), bool)
      for lane, it in enumerate(items):
        if it is not None:
          frames[lane] = it['frames'][0, 0]
          reset[lane] = bool(it['sequence_start'][0, 0])
      score(stream.feed(frames, reset, items))
      if tick == 0:
        steady_start = time.time()
      else:
        steady_frames += len(real)
    score(stream.end())
    seconds = time.time() - start
    steady_seconds = time.time() - steady_start if steady_start is not None else 0.0
    confusion = parallel.sum_over_processes(confusion)
    kind_counts = parallel.sum_over_processes(kind_counts)
    steady_frames = int(parallel.sum_over_processes(np.array([steady_frames], np.int64))[0])
    video.reduce(parallel.sum_over_processes)
    frames_seen, labelled_seen = (int(c) for c in kind_counts.sum(0))
    fps = steady_frames / steady_seconds if steady_seconds > 0 and steady_frames else (
        frames_seen / seconds if seconds > 0 else 0.0)
    return EvalMetrics(confusion=confusion.sum(0), class_names=self.class_names, frames=frames_seen,
                       labelled_frames=labelled_seen, seconds=seconds, frames_per_second=fps, split=self.split,
                       frame_kinds=self.model.frame_kinds, kind_confusion=confusion,
                       kind_frames=tuple(int(c) for c in kind_counts[:, 0]),
                       kind_labelled=tuple(int(c) for c in kind_counts[:, 1]),
                       video=video.results(self.class_names),
                       protocol={**self.protocol.to_json(), 'split': self.split,
                                 'list': frame_list(self.data_config) or 'all'})


# ---------------------------------------------------------------------------------------------------------
# eval.py


def evaluate_run(workdir: str, *, split: str | None = None, checkpoint: str = 'best', overlays: int = 0,
                     overlay_stride: int = 1, eval_batch_size: int | None = None, data_root: str | None = None,
                     native_labels: bool | None = None, report_path: str | None = None,
                     vc_lengths: Sequence[int] | None = None, vc_corrected: bool | None = None,
                     mode: str | None = None, crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                     flip: bool | None = None, scales: Sequence[float] | None = None, frame_list: str | None = None
                     ) -> tuple[EvalMetrics, dict]:
  """Evaluates a training run's checkpoint (see `eval.py`). Returns (metrics, the JSON report written);
  `report['not_written']` lists the outputs that could not be written (a read-only workdir).

  overlays / overlay_stride: save panels of `overlays` frames, every `overlay_stride`-th frame of the split in
  stream order from the first. native_labels: override the run config's `data.eval_native_labels`.
  vc_lengths / vc_corrected: the mVC lengths and form (default: the run config's `eval_vc_lengths` /
  `eval_vc_corrected`).
  mode / crop / stride / flip / scales: the evaluation protocol (`protocols.EvalProtocol`; default: the run
  config's eval_mode / eval_crop / eval_stride / eval_flip / eval_scales, runs from before them: whole frames).
  frame_list: CamVid's `data.camvid.frame_list` ('tmanet': TMANet's lists; '' the split's own list).
  """
  workdir = os.path.abspath(workdir)
  if overlay_stride < 1:
    raise ConfigError(f'overlay_stride must be >= 1, got {overlay_stride}')
  mesh = parallel.make_mesh()
  if os.path.isdir(workdir) and not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR)):
    raise checkpoints.CheckpointError(f'no checkpoint in {workdir}: train first (python train.py '
                                      f'--workdir={workdir})')
  run = runs.load_run(workdir, checkpoint, mesh=mesh)
  config = run.config
  if data_root:
    config.data.root = data_root
  if native_labels is not None:
    config.data.eval_native_labels = bool(native_labels)
  if frame_list is not None:
    if config.data.name != 'camvid':
      raise ConfigError(f'--frame_list is for CamVid, this run is on {config.data.name}')
    config.data.camvid.frame_list = frame_list
  protocol = EvalProtocol.from_config(config, mode=mode, crop=crop, stride=stride, flip=flip, scales=scales)
  split = split or config.get('eval_split', 'val')
  lanes = int(eval_batch_size or config.get('eval_batch_size', 1))
  devices = mesh.devices.size
  if devices > 1:
    lanes = -(-lanes // devices) * devices
  sequences = data_lib.make_sequences(config.data, split)  # a missing split fails here, before compiling

  palette = data_lib.palette(config.data)
  mean, std = config.data.mean, config.data.std
  overlay_dir = os.path.join(workdir, 'overlays', split)
  saved, not_written = [], []

  # Every `overlay_stride`-th frame of the split in stream order (sequence 0 from its first frame, then 1, ...),
  # `overlays` of them, whichever lane plays them.
  offsets = np.cumsum([0] + [sequences.sequence_length(i) for i in range(sequences.num_sequences)])

  def save_overlay(frame: FramePrediction):
    nonlocal overlays
    index = offsets[frame.sequence_index] + frame.frame_index
    if jax.process_index() != 0 or index % overlay_stride or index // overlay_stride >= overlays:
      return  # (with several processes: the frames that process 0 plays)
    image = visualize.resize_image(visualize.denormalize(frame.frames, mean, std), frame.prediction.shape)
    label = frame.label if frame.labelled else None
    path = os.path.join(overlay_dir, f'{frame.sequence}_{frame.frame_number:06d}.png')
    try:
      visualize.save_png(path, visualize.panel(image, frame.prediction, label, palette))
      saved.append(path)
    except OSError as e:  # a read-only workdir: the evaluation goes on, the report says what was not written
      overlays = 0  # no more tries
      not_written.append(f'{overlay_dir}: {e.strerror or e}')

  evaluator = Evaluator(run.model, config.data, split, lanes=lanes, mesh=mesh,
                        class_names=data_lib.class_names(config.data),
                        video_options=VideoMetricOptions.from_config(config, vc_lengths, vc_corrected),
                        protocol=protocol)
  metrics = evaluator.evaluate(run.variables, callback=save_overlay if overlays > 0 else None)
  saved.sort()
  report = {
      'workdir': workdir,
      'checkpoint': {'which': str(checkpoint), 'step': run.step, 'path': run.checkpoint_path,
                     'stored_metrics': run.metrics},
      'model': {'temporal': config.model.temporal, 'depth': config.model.depth, 'head': config.model.head},
      'dataset': config.data.name,
      'input_size': list(config.data.eval_size) if config.data.get('eval_size') else 'native',
      'labels': ('native' if not config.data.get('eval_size') or config.data.get('eval_native_labels')
                 else 'resized to input_size'),
      'eval_batch_size': lanes,
      **metrics.to_json(),
      'overlays': saved,
  }
  if jax.process_index() == 0:
    path = report_path or os.path.join(workdir, f'eval_{split}.json')
    try:
      atomic_write_text(path, json.dumps(report, indent=2) + '\n')
      report['report_path'] = path
    except OSError as e:
      not_written.append(f'{path}: {e.strerror or e}')
  report['not_written'] = not_written  # outputs that could not be written (the metrics are complete)
  return metrics, report
