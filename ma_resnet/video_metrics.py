"""Video metrics of predicted label maps: mean video consistency (mVC_n) and label-free temporal consistency.

    accs = video_consistency(labels, predictions, 8)      # one video, (H, W) int arrays in time order
    metrics = VideoMetrics(num_classes)                    # streamed, any number of interleaved sequences
    metrics.update(stream, sequence, frame_index, label, labelled, prediction)
    metrics.results(class_names)                           # {'mvc8': ..., 'mvc16': ..., 'consistency': ...}

**mVC_n** (VSPW, Miao et al. CVPR 2021; reported beside mIoU by CFFM, MRCFA, TV3S). The reference is `get_common`
of the VSPW authors' `VC_perclip.py` (VSPW-dataset/VSPW_code; the same function in sssdddwww2/
CVPR2021_VSPW_Implement and in the peers' code). For one video of L frames with ground truth g and prediction p
and each window start i = 0 .. L-n-1:

    G_i = AND_{j=1..n-1} [g_i == g_{i+j}]     (pixels whose ground truth stays the same over frames i..i+n-1)
    P_i = AND_{j=1..n-1} [p_i == p_{i+j}]     (pixels whose prediction stays the same)
    acc_i = sum(G_i AND P_i) / sum(G_i)        (NaN when no pixel's ground truth is constant: 0/0)

and mVC_n is the NaN-mean of acc_i pooled over the windows of all videos (a long video weighs more; not a mean of
per-video means). Quirks of the reference, reproduced here: the window starting at L-n (the last full one) is
never scored (its loop is `range(L - n)`); a video of L <= n frames gives no window; a pixel counts where the
prediction is constant whether or not it equals the ground truth; the ignore label (255, and VSPW's raw 0,
both 255 here as in the CFFM copy) is an ordinary value: pixels that stay 'ignore' are in the denominator, and
in the numerator where the prediction is constant there. The corrected form (`corrected=True`,
`mvc<n>_corrected`) scores all L-n+1 windows, leaves ignore pixels out of both sums, and counts a pixel only
where the constant prediction equals the constant ground truth.

Computed with run lengths: per pixel, the number of consecutive frames up to t with the same value; a window
ending at frame t is constant at a pixel exactly when that run length is >= n (all frames equal to frame i is
the same as all consecutive pairs equal). A stream keeps one previous label map, one previous prediction and two
(H, W) run-length maps, whatever n, instead of n frames. The reference's skipped last window: the window ending
at frame t is scored only once frame t+1 of the same sequence arrives.

**Temporal consistency** (no labels; also for `predict.py`): of the pixels of frame t (every frame with a
successor in its sequence), the share whose predicted class is the same in frame t+1, pooled over all pairs of
consecutive frames; per class c: of the pixels predicted c in frame t, the share still c in frame t+1 (NaN for a
class never predicted on a frame with a successor). Unwarped: a moving object or camera lowers it even for a
perfect model, so it compares models on the same video, not videos. (VSPW's TC instead compares frame t with
frame t+1 warped back by RAFT optical flow; see docs/compare.md for why no flow is used here.)

With sparse labels (a dataset outside `DENSELY_LABELLED`, e.g. CamVid, Cityscapes, or any frame of the split
without ground truth) mVC is undefined and absent from the results (`mvc_absent` says why), never 0. Pure
numpy: no JAX.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

IGNORE_INDEX = 255
DEFAULT_VC_LENGTHS = (8, 16)
# Datasets (`data.name`) with ground truth on every frame of their videos: VSPW (annotated at the 15 fps its
# frames were extracted at) and the synthetic video. CamVid's frames here are its labelled frames, 1 s apart (30
# video frames), Cityscapes has one labelled frame in 30: mVC_n is undefined on them.
DENSELY_LABELLED = ('vspw', 'synthetic')


def _check_video(labels, predictions) -> tuple[list[np.ndarray], list[np.ndarray]]:
  labels = [np.asarray(x) for x in labels]
  predictions = [np.asarray(x) for x in predictions]
  if len(labels) != len(predictions):
    raise ValueError(f'{len(labels)} label maps but {len(predictions)} predictions')
  for t, (g, p) in enumerate(zip(labels, predictions)):
    if g.ndim != 2 or g.shape != p.shape or g.shape != labels[0].shape:
      raise ValueError(f'frame {t}: label {g.shape} and prediction {p.shape} must be (H, W) maps of one size '
                       f'(frame 0: {labels[0].shape})')
  return labels, predictions


def _check_length(n) -> int:
  if isinstance(n, bool) or int(n) != n or int(n) < 1:
    raise ValueError(f'video consistency length n must be a positive integer, got {n!r}')
  return int(n)


class _RunLengths:
  """Per pixel, how many consecutive frames up to the current one had its current value (capped at `cap`)."""

  def __init__(self, cap: int):
    self.cap = cap
    self.last = None
    self.runs = None

  def push(self, values: np.ndarray) -> np.ndarray:
    if self.last is None:
      self.runs = np.ones(values.shape, np.int32)
    else:
      grown = np.minimum(self.runs + 1, self.cap).astype(np.int32)
      self.runs = np.where(values == self.last, grown, np.int32(1))
    self.last = np.array(values)  # a copy: the caller may reuse its buffer
    return self.runs


class _SequenceVC:
  """mVC_n of one sequence: frames pushed in time order; yields (key, numerator, denominator) per scored window."""

  def __init__(self, lengths: Sequence[int], corrected: bool, ignore_index: int):
    self.lengths = tuple(lengths)
    self.corrected = corrected
    self.ignore_index = ignore_index
    self.labels = _RunLengths(max(self.lengths))
    self.predictions = _RunLengths(max(self.lengths))
    self.frames = 0
    self.pending = []  # the reference's windows ending at the previous frame: scored when this frame arrives

  def push(self, label: np.ndarray, prediction: np.ndarray) -> list[tuple[str, int, int]]:
    scored, self.pending = self.pending, []
    run_g, run_p = self.labels.push(label), self.predictions.push(prediction)
    self.frames += 1
    for n in self.lengths:
      if self.frames < n:
        continue
      constant_g, constant_p = run_g >= n, run_p >= n
      self.pending.append((f'mvc{n}', int(np.count_nonzero(constant_g & constant_p)),
                           int(np.count_nonzero(constant_g))))
      if self.corrected:
        scored_g = constant_g & (label != self.ignore_index)
        scored.append((f'mvc{n}_corrected', int(np.count_nonzero(scored_g & constant_p & (prediction == label))),
                       int(np.count_nonzero(scored_g))))
    return scored


def video_consistency(labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray], n: int, *,
                      corrected: bool = False, ignore_index: int = IGNORE_INDEX) -> list[float]:
  """The per-window accuracies acc_i of one video, in window order (see the module docstring).

  labels, predictions: sequences of (H, W) integer maps of one video in time order. corrected=False: exactly the
  VSPW reference (`get_common`): windows i = 0 .. L-n-1, NaN where a window has no pixel of constant ground
  truth, [] for a video of L <= n frames. corrected=True: the corrected form (windows 0 .. L-n, ignore pixels
  left out, a pixel counts only where the constant prediction is the constant ground truth).
  """
  n = _check_length(n)
  labels, predictions = _check_video(labels, predictions)
  track = _SequenceVC((n,), corrected, ignore_index)
  key = f'mvc{n}_corrected' if corrected else f'mvc{n}'
  accs = []
  for g, p in zip(labels, predictions):
    accs += [num / den if den else math.nan for k, num, den in track.push(g, p) if k == key]
  return accs


@dataclasses.dataclass(frozen=True)
class VideoMetricOptions:
  """vc_lengths: the n of mVC_n; vc_corrected: also the corrected form (`mvc<n>_corrected`)."""
  vc_lengths: tuple[int, ...] = DEFAULT_VC_LENGTHS
  vc_corrected: bool = False
  ignore_index: int = IGNORE_INDEX

  def __post_init__(self):
    object.__setattr__(self, 'vc_lengths', tuple(_check_length(n) for n in self.vc_lengths))

  @classmethod
  def from_config(cls, config, vc_lengths: Sequence[int] | None = None,
                  vc_corrected: bool | None = None) -> 'VideoMetricOptions':
    """From a training config's `eval_vc_lengths` / `eval_vc_corrected` (runs made before they existed: the
    defaults), unless given."""
    if vc_lengths is None:
      vc_lengths = config.get('eval_vc_lengths', DEFAULT_VC_LENGTHS) or ()
    if vc_corrected is None:
      vc_corrected = config.get('eval_vc_corrected', False)
    return cls(vc_lengths=tuple(vc_lengths), vc_corrected=bool(vc_corrected))


@dataclasses.dataclass
class _Stream:
  sequence: Any
  frame_index: int
  prediction: np.ndarray
  vc: _SequenceVC | None      # mVC of the sequence so far (None: no mVC)


class VideoMetrics:
  """mVC_n and temporal consistency of a streamed split (see the module docstring).

  Frames come through `update` in time order per `stream` (e.g. an evaluation lane); several streams may
  interleave. A stream's sequence ends when it shows another sequence or a frame that does not follow the last
  one. Totals are plain arrays: `reduce(fn)` sums them over processes before `results`. dataset: the data's
  `data.name`; one outside `DENSELY_LABELLED` has no mVC (None: judged by the `labelled` flags alone).
  """

  def __init__(self, num_classes: int, options: VideoMetricOptions | None = None, *, dataset: str | None = None):
    self.num_classes = int(num_classes)
    self.options = options or VideoMetricOptions()
    self.sparse = (None if dataset is None or dataset in DENSELY_LABELLED else
                   f'sparse labels: {dataset} has ground truth on some frames of its videos only')
    self.keys = tuple(f'mvc{n}' for n in self.options.vc_lengths) + (
        tuple(f'mvc{n}_corrected' for n in self.options.vc_lengths) if self.options.vc_corrected else ())
    self._streams: dict[Any, _Stream] = {}
    self.totals = {
        'acc_sum': np.zeros(len(self.keys), np.float64),     # sum of the defined acc_i
        'windows': np.zeros(len(self.keys), np.int64),       # windows with a defined acc_i
        'nan_windows': np.zeros(len(self.keys), np.int64),   # windows without a pixel of constant ground truth
        'kept': np.zeros(self.num_classes, np.int64),        # pixels of class c in frame t still c in t+1
        'followed': np.zeros(self.num_classes, np.int64),    # pixels of class c in frames t with a successor
        'frames': np.zeros(2, np.int64),                     # frames seen, frames without ground truth
    }

  def update(self, stream, sequence, frame_index: int, label: np.ndarray, labelled: bool,
             prediction: np.ndarray) -> None:
    """One frame of `sequence` (any id) at position `frame_index`, seen by `stream`: its (H, W) ground truth
    (ignored when not `labelled`) and prediction (class ids 0..K-1)."""
    prediction = np.array(prediction)  # kept until the next frame: a copy, the caller may reuse its buffer
    totals = self.totals
    previous = self._streams.get(stream)
    follows = (previous is not None and previous.sequence == sequence and frame_index == previous.frame_index + 1
               and previous.prediction.shape == prediction.shape)
    if follows:
      prior = previous.prediction.ravel()
      kept = np.bincount(prior[prior == prediction.ravel()], minlength=self.num_classes)
      followed = np.bincount(prior, minlength=self.num_classes)
      if followed.size > self.num_classes:
        raise ValueError(f'prediction values outside 0..{self.num_classes - 1}')
      totals['kept'] += kept
      totals['followed'] += followed
    totals['frames'] += (1, 0 if labelled else 1)
    vc = previous.vc if follows else None
    if self.sparse or not labelled or totals['frames'][1]:  # sparse labels: no mVC for the whole split
      vc = None
    elif self.keys:
      if vc is None:
        vc = _SequenceVC(self.options.vc_lengths, self.options.vc_corrected, self.options.ignore_index)
      for key, num, den in vc.push(np.asarray(label), prediction):
        i = self.keys.index(key)
        if den:
          totals['acc_sum'][i] += num / den
          totals['windows'][i] += 1
        else:
          totals['nan_windows'][i] += 1
    self._streams[stream] = _Stream(sequence, int(frame_index), prediction, vc)

  def reduce(self, sum_arrays: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replaces every total by `sum_arrays(total)` (e.g. `parallel.sum_over_processes`)."""
    self.totals = {k: np.asarray(sum_arrays(v)) for k, v in self.totals.items()}

  def results(self, class_names: Sequence[str]) -> dict[str, Any]:
    """{'mvc8': ..., 'mvc16': ..., ['mvc8_corrected', ...], 'mvc_windows': {key: [windows scored, windows
    without constant ground truth]}, 'consistency': ..., 'consistency_per_class': {name: share}}; with sparse
    labels 'mvc_absent': why, in place of the mVC keys. Shares in 0..1; None where undefined."""
    totals = self.totals
    frames, unlabelled = (int(x) for x in totals['frames'])
    out: dict[str, Any] = {}
    if self.keys and (self.sparse or unlabelled):
      out['mvc_absent'] = self.sparse or (f'sparse labels: {unlabelled} of {frames} frames have no ground truth '
                                          '(mVC needs every frame labelled)')
    elif self.keys:
      for i, key in enumerate(self.keys):
        windows = int(totals['windows'][i])
        out[key] = float(totals['acc_sum'][i] / windows) if windows else None
      out['mvc_windows'] = {key: [int(totals['windows'][i]), int(totals['nan_windows'][i])]
                            for i, key in enumerate(self.keys)}
    kept, followed = totals['kept'], totals['followed']
    out['consistency'] = float(kept.sum() / followed.sum()) if followed.sum() else None
    out['consistency_per_class'] = {name: float(kept[c] / followed[c]) if followed[c] else None
                                    for c, name in enumerate(class_names)}
    return out


def scalars(results: Mapping[str, Any]) -> dict[str, float]:
  """The scalar entries of `VideoMetrics.results` (mvc*, consistency) that are defined."""
  return {k: float(v) for k, v in results.items()
          if (k.startswith('mvc') or k == 'consistency') and isinstance(v, (int, float))}


def table_lines(results: Mapping[str, Any]) -> list[str]:
  """Lines for the evaluation table."""
  lines = []
  for key, windows in results.get('mvc_windows', {}).items():
    n, corrected = key[3:].partition('_')[::2]
    name = f'mVC{n}{" (corrected)" if corrected else ""}'
    if results.get(key) is None:
      lines.append(f'{name}: no window (every sequence has too few frames)' if not windows[1] else
                   f'{name}: none of {windows[1]} windows has a pixel of constant ground truth')
      continue
    lines.append(f'{name}: {100 * results[key]:.2f}% over {windows[0]} windows'
                 + (f' ({windows[1]} without constant ground truth left out)' if windows[1] else ''))
  if 'mvc_absent' in results:
    lines.append(f'mVC: absent ({results["mvc_absent"]})')
  if results.get('consistency') is not None:
    lines.append(f'temporal consistency: {100 * results["consistency"]:.2f}% of pixels keep their class from one '
                 'frame to the next')
  return lines
