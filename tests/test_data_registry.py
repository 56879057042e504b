"""The dataset registry (`data.registry`): a dataset registered from its `DatasetSpec` alone is read, named and
coloured through `data.pipeline`; an unknown `data.name` is one ConfigError naming the registered datasets."""
import numpy as np
import pytest

from ma_resnet import cli
from ma_resnet.data import pipeline, registry
from ma_resnet.data.sequences import Frame, SequenceDataset
from ma_resnet.data.spec import DatasetSpec
from ma_resnet.errors import ConfigError


class Stripes(SequenceDataset):
  """Generated video: sequence i, frame t is a (h, w) picture whose label is column // (w / classes), shifted by
  t columns; the colour of a pixel encodes (i, t, label)."""

  dataset_name = 'stripes'

  def __init__(self, split, root, *, sequences, frames, classes, size=(6, 8)):
    self.split, self.root, self.frames, self.classes, self.size = split, root, frames, classes, size
    self._names = tuple(f'{split}_{i}' for i in range(sequences))

  @property
  def sequence_names(self):
    return self._names

  def sequence_length(self, sequence_index):
    return self.frames

  def frame_number(self, sequence_index, position):
    return 10 * position

  def read_frame(self, sequence_index, position):
    h, w = self.size
    label = ((np.arange(w) + position) % w * self.classes // w).astype(np.uint8)
    label = np.broadcast_to(label, (h, w)).copy()
    image = np.stack([np.full((h, w), sequence_index), np.full((h, w), position), label], -1).astype(np.uint8)
    return Frame(image, label, labelled=position % 2 == 0)


def read_stripes(config, split, root):
  return Stripes(split, root, sequences=config.stripes['sequences'], frames=config.stripes['frames'],
                 classes=len(config.stripes['classes']))


STRIPES = DatasetSpec(
    name='stripes', read=read_stripes, splits=('train', 'val'),
    class_names=lambda config: tuple(config.stripes['classes']),
    palette=lambda config: np.array([[40 * i, 255 - 40 * i, 7] for i in range(len(config.stripes['classes']))]),
    crop_size=(4, 4), eval_size=(3, 4), defaults={'clip_length': 3},
    options={'stripes': {'sequences': 2, 'frames': 3, 'classes': ('sky', 'road')}})


@pytest.fixture
def stripes(monkeypatch):
  monkeypatch.setattr(registry, 'DATASETS', dict(registry.DATASETS))  # registered for this test only
  registry.register(STRIPES)
  return STRIPES


def test_a_registered_dataset_is_read_named_and_coloured_through_the_pipeline(stripes, tmp_path):
  config = pipeline.default_data_config('stripes')
  assert (config.crop_size, config.eval_size, config.clip_length) == ((4, 4), (3, 4), 3)  # the spec's defaults
  assert config.stripes.frames == 3 and config.camvid.video_frames == ''  # its options; the others' are kept
  assert 'stripes' in pipeline.default_data_config('camvid')  # every config has every dataset's own fields
  config.root = str(tmp_path)
  config.stripes.classes = ('sky', 'road', 'car')

  sequences = pipeline.make_sequences(config, 'val')
  assert isinstance(sequences, Stripes) and sequences.root == str(tmp_path) and sequences.split == 'val'
  assert sequences.sequence_names == ('val_0', 'val_1') and sequences.sequence_lengths == (3, 3)
  frame = sequences.read_frame(1, 2)
  np.testing.assert_array_equal(frame.label[0], [0, 1, 1, 1, 2, 2, 0, 0])  # (column + 2) % 8 * 3 // 8
  assert frame.image[0, 0].tolist() == [1, 2, 0] and frame.labelled

  assert pipeline.class_names(config) == ('sky', 'road', 'car') and pipeline.num_classes(config) == 3
  colours = pipeline.palette(config)
  assert colours.dtype == np.uint8 and colours.tolist() == [[0, 255, 7], [40, 215, 7], [80, 175, 7]]

  stream = list(pipeline.make_eval_stream(config))  # eval_split 'val', frames resized to the spec's eval_size
  assert [(s['sequence'], s['frame_index'], s['frame_number']) for s in stream][:4] == [
      ('val_0', 0, 0), ('val_0', 1, 10), ('val_0', 2, 20), ('val_1', 0, 0)]
  assert stream[0]['frames'].shape == (1, 1, 3, 4, 3) and stream[0]['labels'].shape == (1, 1, 3, 4)
  assert [bool(s['labelled'][0, 0]) for s in stream[:3]] == [True, False, True]


def test_a_dataset_registered_twice_is_refused(stripes):
  with pytest.raises(ValueError, match="'stripes' is already registered"):
    registry.register(stripes)


@pytest.mark.parametrize('ask', [pipeline.make_sequences, pipeline.class_names, pipeline.palette,
                                 lambda config: pipeline.default_data_config(config['name'])])
def test_an_unknown_dataset_is_one_config_error_naming_the_registered_ones(stripes, ask):
  with pytest.raises(ConfigError) as info:
    ask({'name': 'camvdi'})
  message = str(info.value)
  assert '\n' not in message and "got 'camvdi'" in message
  assert all(repr(name) in message for name in ('synthetic', 'camvid', 'vspw', 'cityscapes', 'stripes'))
  assert info.value.exit_code == cli.EXIT_USAGE  # what train.py / eval.py exit with
