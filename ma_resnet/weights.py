r"""Pretrained ImageNet weights by name: the catalogue, downloading, conversion, one cache folder.

    python -m ma_resnet.weights list                     # the catalogue: name, source, checksum, converter, ...
    python -m ma_resnet.weights fetch mmcv_resnet50_v1c   # download + convert ahead of time ('all': every entry)
    python -m ma_resnet.weights where mmcv_resnet50_v1c   # its URL, where to put the file by hand, the copy
    python train.py --config=configs/tmanet_camvid.py --workdir=runs/x --config.init_from=mmcv_resnet50_v1c

The catalogue (`CATALOGUE`, one `Entry` per name) holds the ImageNet initialisations of the papers' recipes:
each with its source (a URL, fetched with pooch, or a Hugging Face hub file, fetched with huggingface_hub),
the checksum its publisher gives (a full sha256; or the 8-hex sha256 prefix in the file name, torch.hub's
convention; or none), its converter (a `ma_resnet.convert.convert_weights` framework), the architecture it
converts to (depth, variant) and the ImageNet top-1 its publisher reports. `$MA_RESNET_CATALOGUE` may name a
JSON file {name: {field: value}} whose entries add to or update the built-in ones (`{"timm_resnet50d":
{"sha256": "..."}}` pins a checksum; a new name needs framework, depth, variant and url or hf_repo +
hf_filename).

The cache (`$MA_RESNET_CACHE`, default ~/.cache/ma_resnet):

    downloads/<name>/<file>                     the file as published: put it here by hand when offline
    converted/<name>-<checksum>/                its converted copy (variables/, metadata.json, source.json)
    converted/file-<sha256[:16]>-<framework>-<depth>/   a weights file given by path, converted once
    locks/                                      processes sharing the cache fetch and convert one at a time

A file is checked against its entry's checksum before anything is converted from it; one that does not match
is deleted and nothing is converted. Downloads land under a temporary name (pooch and huggingface_hub stream
into a temporary file themselves) and get their final name only once complete and checked, so an interrupted
transfer leaves nothing a later run accepts. Conversions are written all or nothing (`files.atomic_path`).
The hub's files have no checksum recorded here: the hub's own sha256 of the file (its ETag, asked at download
time) is checked, and the file's sha256 is printed so that it can be pinned.

`parse_init_from` reads the `init_from` field of a training config (the forms are in `InitFrom`);
`ma_resnet.warm_start.warm_start` applies it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
from typing import Callable
from urllib.parse import urlparse

from absl import logging

from ma_resnet.files import atomic_path, atomic_write_text

CACHE_ENV = 'MA_RESNET_CACHE'
CATALOGUE_ENV = 'MA_RESNET_CATALOGUE'
FRAMEWORKS = ('torchvision', 'timm', 'mmcv', 'paddle')  # = ma_resnet.convert.FRAMEWORKS (not imported: lazy)
AUTHORS = ('tmanet', 'stf_mar', 'ma_resnet50')  # init_from prefixes of the authors' trained models
WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.pdparams')
ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar')
SOURCE_RECORD = 'source.json'
_HEX64, _HEX8 = re.compile(r'[0-9a-f]{64}'), re.compile(r'[0-9a-f]{8}')


class WeightsError(ValueError):
  """A catalogue name, weights file or download that cannot be used; the message is one line saying why."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One catalogue entry: where a weights file is published, how to check and convert it, what it is."""
  name: str
  framework: str                # the converter: ma_resnet.convert.convert_weights(framework, ...)
  depth: int                    # the ResNet it converts to
  variant: str                  # 'torchvision' | 'vd' | 'v1c'
  url: str = ''                 # a direct download (pooch) ...
  hf_repo: str = ''             # ... or a Hugging Face hub file (huggingface_hub.hf_hub_download)
  hf_filename: str = ''
  hf_revision: str = ''         # '' = the hub's main branch
  hf_endpoint: str = ''         # '' = huggingface.co ($HF_ENDPOINT); or a mirror
  sha256: str = ''              # the published sha256 of the file
  sha256_prefix: str = ''       # the 8-hex sha256 prefix in the file name (torch.hub's convention)
  top1: float | None = None     # ImageNet-1k top-1 (%) its publisher reports
  top1_source: str = ''         # where that figure is published (or why there is none)
  note: str = ''

  @property
  def file_name(self) -> str:
    return os.path.basename(urlparse(self.url).path if self.url else self.hf_filename)

  @property
  def source_url(self) -> str:
    if self.url:
      return self.url
    from huggingface_hub import hf_hub_url
    return hf_hub_url(self.hf_repo, self.hf_filename, revision=self.hf_revision or None,
                      endpoint=self.hf_endpoint or None)

  @property
  def checksum(self) -> str:
    """The published checksum, in words."""
    if self.sha256:
      return f'sha256 {self.sha256}'
    if self.sha256_prefix:
      return f'sha256 prefix {self.sha256_prefix} (file name)'
    return "the hub's sha256 (asked at download)" if self.hf_repo else 'none published'

  @property
  def key(self) -> str:
    """What the converted copy is keyed by, beside the name: the published checksum."""
    return self.sha256[:16] or self.sha256_prefix or 'unpinned'

  def accepts(self, sha256: str) -> bool:
    """Whether a file of this sha256 is the published one (True for any when nothing is published)."""
    return (not self.sha256 or sha256 == self.sha256) and sha256.startswith(self.sha256_prefix)


_MMCV_TOP1 = ('not published: a third-party file whose ImageNet accuracy open-mmlab does not know '
              '(open-mmlab/mmsegmentation#1176, #1280)')

CATALOGUE = (
    Entry('mmcv_resnet50_v1c', 'mmcv', 50, 'v1c',
          url='https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth',
          sha256_prefix='2cccc1ad', top1_source=_MMCV_TOP1,
          note="mmcv model zoo (mmcv/model_zoo/open_mmlab.json) 'resnet50_v1c': the initialisation of TMANet "
               "and of the PSPNet under STF + MAR (both configs name it)"),
    Entry('mmcv_resnet101_v1c', 'mmcv', 101, 'v1c',
          url='https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth',
          sha256_prefix='e67eebb6', top1_source=_MMCV_TOP1,
          note="mmcv model zoo 'resnet101_v1c' (mmseg's R101-D8 models)"),
    Entry('paddleseg_resnet50_vd_ssld_v2', 'paddle', 50, 'vd',
          url='https://bj.bcebos.com/paddleseg/dygraph/resnet50_vd_ssld_v2.tar.gz',
          top1=83.0, top1_source='PaddleClas, ResNet and ResNet_vd models: ResNet50_vd_ssld_v2 top-1 0.830',
          note="PaddleSeg's ResNet50_vd backbone weights (a tar.gz holding model.pdparams): MA-ResNet50's "
               'initialisation (the authors load resnet50_vd_ssld_v2_imagenet/model.pdparams)'),
    Entry('torchvision_resnet50_v1', 'torchvision', 50, 'torchvision',
          url='https://download.pytorch.org/models/resnet50-0676ba61.pth', sha256_prefix='0676ba61',
          top1=76.130, top1_source='torchvision ResNet50_Weights.IMAGENET1K_V1 (_metrics acc@1)'),
    Entry('torchvision_resnet50_v2', 'torchvision', 50, 'torchvision',
          url='https://download.pytorch.org/models/resnet50-11ad3fa6.pth', sha256_prefix='11ad3fa6',
          top1=80.858, top1_source='torchvision ResNet50_Weights.IMAGENET1K_V2 (_metrics acc@1)'),
    Entry('timm_resnet50d', 'timm', 50, 'vd', hf_repo='timm/resnet50d.ra2_in1k', hf_filename='model.safetensors',
          top1=80.546, top1_source='timm results/results-imagenet.csv, resnet50d.ra2_in1k at 224 px (81.354 at 288)'),
    Entry('timm_resnet50c', 'timm', 50, 'v1c', hf_repo='timm/resnet50c.gluon_in1k', hf_filename='model.safetensors',
          top1=78.016, top1_source='timm results/results-imagenet.csv, resnet50c.gluon_in1k at 224 px'),
)


def _check_entry(entry: Entry, where: str) -> Entry:
  """The entry, or WeightsError naming `where` and the field at fault."""
  def need(condition, message):
    if not condition:
      raise WeightsError(f'{where}: catalogue entry {entry.name!r}: {message}')
  need(re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.-]*', entry.name or ''),
       'a name is letters, digits, _ . - (no / or :)')
  need(entry.framework in FRAMEWORKS, f'framework must be one of {FRAMEWORKS}, got {entry.framework!r}')
  need(entry.depth in (18, 34, 50, 101, 152), f'depth must be 18, 34, 50, 101 or 152, got {entry.depth!r}')
  need(entry.variant in ('torchvision', 'vd', 'v1c'), f"variant must be 'torchvision', 'vd' or 'v1c', got "
       f'{entry.variant!r}')
  need(bool(entry.url) != bool(entry.hf_repo), 'give either url or hf_repo (+ hf_filename)')
  need(not entry.hf_repo or entry.hf_filename, 'hf_repo needs hf_filename')
  need(not entry.sha256 or _HEX64.fullmatch(entry.sha256), 'sha256 must be 64 lowercase hex digits')
  need(not entry.sha256_prefix or _HEX8.fullmatch(entry.sha256_prefix), 'sha256_prefix must be 8 lowercase hex')
  need(entry.accepts(entry.sha256) if entry.sha256 and entry.sha256_prefix else True,
       'sha256 does not start with sha256_prefix')
  return entry


def catalogue() -> dict[str, Entry]:
  """name -> Entry: the built-in catalogue, updated by the JSON file $MA_RESNET_CATALOGUE names (if any)."""
  entries = {e.name: e for e in CATALOGUE}
  path = os.environ.get(CATALOGUE_ENV)
  if not path:
    return entries
  try:
    with open(path) as f:
      overrides = json.load(f)
  except (OSError, ValueError) as e:
    raise WeightsError(f'${CATALOGUE_ENV}={path}: cannot read it as JSON ({e})') from None
  if not isinstance(overrides, dict):
    raise WeightsError(f'${CATALOGUE_ENV}={path}: expected an object {{name: {{field: value}}}}')
  fields = {f.name for f in dataclasses.fields(Entry)} - {'name'}
  for name, values in overrides.items():
    unknown = sorted(set(values) - fields) if isinstance(values, dict) else ['(not an object)']
    if unknown:
      raise WeightsError(f'${CATALOGUE_ENV}={path}: entry {name!r}: unknown fields {unknown} (fields: '
                         f'{sorted(fields)})')
    try:
      entry = dataclasses.replace(entries[name], **values) if name in entries else Entry(name=name, **values)
    except TypeError as e:
      raise WeightsError(f'${CATALOGUE_ENV}={path}: entry {name!r}: {e}') from None
    entries[name] = _check_entry(entry, f'${CATALOGUE_ENV}={path}')
  return entries


def get(name: str) -> Entry:
  entries = catalogue()
  if name not in entries:
    raise WeightsError(f'{name!r} is not in the weights catalogue (names: {", ".join(entries)})')
  return entries[name]


# ---------------------------------------------------------------------------------------------------------
# The init_from field.


@dataclasses.dataclass(frozen=True)
class InitFrom:
  """What a config's `init_from` names:

    ''                        kind 'none': the initialisers' values (from scratch)
    NAME                      'catalogue': a catalogue entry (downloaded and converted once, into the cache)
    FILE.pth|.pt|.bin|.safetensors|.pdparams
                              'weights': ImageNet weights of a framework, detected from the suffix and the keys
    torchvision:FILE, timm:FILE, mmcv:FILE, paddle:FILE
                              'weights' of that framework (no detection)
    tmanet:FILE, stf_mar:FILE, ma_resnet50:FILE
                              'authors': the authors' trained TMANet (.pth), STF + MAR (.pth), MA-ResNet50 (.pdparams)
    DIR                       'path': a converted folder (python -m ma_resnet.convert) or a train.py run (its
                              folder, its checkpoints/ folder or a step folder)
  """
  kind: str
  value: str = ''
  framework: str = ''  # 'weights': the framework ('' = detect); 'authors': the prefix


def parse_init_from(text: str) -> InitFrom:
  """The `InitFrom` of a config's init_from (no file is read). WeightsError for an unknown `prefix:`."""
  text = (text or '').strip()
  if not text:
    return InitFrom('none')
  prefix, sep, rest = text.partition(':')
  if sep and re.fullmatch(r'[a-z][a-z0-9_]*', prefix):
    if prefix in FRAMEWORKS:
      return InitFrom('weights', rest, prefix)
    if prefix in AUTHORS:
      return InitFrom('authors', rest, prefix)
    raise WeightsError(f'init_from={text}: unknown prefix {prefix!r}: expected FILE, DIR, a catalogue name or '
                       f'one of {", ".join(p + ":FILE" for p in FRAMEWORKS + AUTHORS)}')
  if text in catalogue():
    return InitFrom('catalogue', text)
  if text.lower().endswith(WEIGHT_SUFFIXES):
    return InitFrom('weights', text)
  return InitFrom('path', text)


def check_init_from(config) -> None:
  """ValueError('invalid config: init_from ...') when `config.init_from` is malformed, or names a catalogue
  entry whose architecture is not the model's (naming both). Reads no file and makes no request."""
  try:
    spec = parse_init_from(config.init_from)
    entry = get(spec.value) if spec.kind == 'catalogue' else None
  except WeightsError as e:
    raise ValueError(f'invalid config: {e}') from None
  if entry is None:
    return
  model = config.model
  backbone = model.get('backbone', 'resnet')
  if backbone not in ('resnet', 'pspnet'):
    raise ValueError(f'invalid config: init_from={entry.name} is an ImageNet ResNet{entry.depth} ({entry.variant}) '
                     f'but model.backbone is {backbone!r}')
  if (entry.depth, entry.variant) != (int(model.depth), str(model.variant)):
    raise ValueError(f'invalid config: init_from={entry.name} is a ResNet{entry.depth} ({entry.variant}) but the '
                     f'model is a ResNet{model.depth} ({model.variant}): set model.depth / model.variant to '
                     'match, or name another entry (python -m ma_resnet.weights list)')


# ---------------------------------------------------------------------------------------------------------
# The cache: downloads, checks, conversions.


def cache_dir() -> str:
  """$MA_RESNET_CACHE, default ~/.cache/ma_resnet (absolute)."""
  return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join('~', '.cache', 'ma_resnet')))


def download_path(entry: Entry) -> str:
  """Where `entry`'s file is kept, and where a user may put it by hand."""
  return os.path.join(cache_dir(), 'downloads', entry.name, entry.file_name)


def converted_path(entry: Entry) -> str:
  return os.path.join(cache_dir(), 'converted', f'{entry.name}-{entry.key}')


def _lock(key: str):
  """A file lock in the cache: processes sharing the cache (the hosts of a multi-host run, on a shared
  filesystem) fetch and convert one at a time; the others then find the converted copy."""
  from filelock import FileLock
  folder = os.path.join(cache_dir(), 'locks')
  os.makedirs(folder, exist_ok=True)
  return FileLock(os.path.join(folder, f'{key}.lock'))


def sha256_of(path: str) -> str:
  import pooch
  return pooch.file_hash(path, alg='sha256')


def _reason(error: Exception) -> str:
  """A short reason for a failed transfer (requests' and httpx' messages are long)."""
  text = str(error)
  for pattern in (r'\[Errno -?\d+\] ([^\'")\]]+)', r'(IncompleteRead\([^)]*\))', r'(\d{3} [A-Z][^\n:]*)'):
    found = re.search(pattern, text)
    if found:
      return f'{type(error).__name__}: {found.group(1).strip()}'
  first = text.strip().splitlines()[0][:160] if text.strip() else ''
  return f'{type(error).__name__}: {first}'.rstrip(': ')


def _unreachable(entry: Entry, error: Exception) -> WeightsError:
  return WeightsError(f'cannot download {entry.source_url} ({_reason(error)}); put that file at '
                      f'{download_path(entry)} and run the same command again')


def _checked(entry: Entry, path: str, expected: str = '') -> str:
  """The sha256 of `path` if it is `entry`'s published file (and `expected`, when given); else the file is
  deleted and WeightsError says so."""
  digest = sha256_of(path)
  if entry.accepts(digest) and (not expected or digest == expected):
    return digest
  os.remove(path)
  want = entry.checksum if entry.sha256 or entry.sha256_prefix else f'sha256 {expected}'
  raise WeightsError(f'the file from {entry.source_url} does not match its published checksum '
                     f'({want}; the file has sha256 {digest}): deleted it, nothing converted')


def _fetch_url(entry: Entry, partial: str, progress: bool) -> None:
  import pooch
  pooch_log = pooch.get_logger()
  level = pooch_log.level
  pooch_log.setLevel('WARNING')  # not its "Downloading data from ..." lines on the console
  try:
    pooch.retrieve(entry.url, known_hash=None, fname=os.path.basename(partial), path=os.path.dirname(partial),
                   progressbar=progress)
  except Exception as e:  # pylint: disable=broad-except  (requests / OS errors of every kind)
    raise _unreachable(entry, e) from None
  finally:
    pooch_log.setLevel(level)


def _fetch_hub(entry: Entry, partial: str) -> str:
  """Downloads the hub file to `partial`; returns the hub's sha256 of it ('' when the hub gives none)."""
  from huggingface_hub import get_hf_file_metadata, hf_hub_download
  folder = partial + '.hub'
  try:
    metadata = get_hf_file_metadata(entry.source_url, endpoint=entry.hf_endpoint or None)
    path = hf_hub_download(entry.hf_repo, entry.hf_filename, revision=entry.hf_revision or None,
                           local_dir=folder, endpoint=entry.hf_endpoint or None)
    os.replace(path, partial)
  except Exception as e:  # pylint: disable=broad-except  (httpx / hub errors of every kind)
    raise _unreachable(entry, e) from None
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  etag = (metadata.etag or '').strip('"').lower()
  return etag if _HEX64.fullmatch(etag) else ''


def download(entry: Entry, *, progress: bool = False) -> tuple[str, str]:
  """(path, sha256) of `entry`'s file in the cache: the one there if it matches the published checksum,
  else downloaded (and checked). WeightsError when it cannot be had (one line: the URL, the path to put the
  file at by hand) or does not match."""
  dest = download_path(entry)
  if os.path.isfile(dest):
    digest = sha256_of(dest)
    if entry.accepts(digest):
      return dest, digest
    logging.warning('%s: %s does not match its published checksum (%s; it has sha256 %s): deleted, downloading '
                    'it again', entry.name, dest, entry.checksum, digest)
    os.remove(dest)
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  partial = os.path.join(os.path.dirname(dest), f'.{entry.file_name}.partial-{os.getpid()}')
  try:
    expected = ''
    if entry.url:
      _fetch_url(entry, partial, progress)
    else:
      expected = _fetch_hub(entry, partial)
    digest = _checked(entry, partial, expected)
    os.replace(partial, dest)
  finally:
    if os.path.lexists(partial):
      os.remove(partial)
  if not (entry.sha256 or entry.sha256_prefix):
    logging.warning('%s: %s; the file has sha256 %s (pin it with $%s: {"%s": {"sha256": "%s"}})', entry.name,
                    "it matches the sha256 the hub gave" if expected else 'no checksum is published for it', digest,
                    CATALOGUE_ENV, entry.name, digest)
  return dest, digest


def _unpacked(entry: Entry, path: str) -> str:
  """The weights file inside an archive (PaddleSeg's tar.gz), extracted beside it; `path` itself otherwise."""
  if not entry.file_name.endswith(ARCHIVE_SUFFIXES):
    return path
  import pooch
  files = pooch.Untar(extract_dir=f'{entry.file_name}.files')(path, 'download', None)
  weights = [f for f in files if f.lower().endswith(WEIGHT_SUFFIXES)]
  if len(weights) != 1:
    raise WeightsError(f'expected one weights file ({", ".join(WEIGHT_SUFFIXES)}) in {path}, found '
                       f'{len(weights)}: {[os.path.basename(f) for f in files][:8]}')
  return weights[0]


def _recorded_sha256(folder: str) -> str | None:
  """The sha256 of the file a converted copy was made from: its source.json, else the converter's metadata."""
  try:
    with open(os.path.join(folder, SOURCE_RECORD)) as f:
      return json.load(f)['sha256']
  except (OSError, ValueError, KeyError):
    pass
  from ma_resnet.convert import read_metadata
  return (read_metadata(folder).get('source') or {}).get('sha256')


def _cached(folder: str, depth: int, variant: str | None, accepts: Callable[[str], bool]) -> bool:
  """Whether `folder` is a converted copy of that architecture made from an accepted file. A copy placed by
  hand that records no source checksum is taken as it is (a warning says so)."""
  from ma_resnet.convert import ConversionError, read_metadata
  if not os.path.isdir(folder):
    return False
  try:
    arch = read_metadata(folder)['architecture']
    sha256 = _recorded_sha256(folder)
  except (ConversionError, KeyError, TypeError):
    return False
  if arch.get('depth') != depth or (variant is not None and arch.get('variant') != variant):
    return False
  if sha256 is None:
    logging.warning('%s records no checksum of the file it was converted from: used as it is', folder)
    return True
  return accepts(sha256)


def _convert(framework: str, source: str, out: str, *, depth: int, variant: str | None, record: dict) -> str:
  """Converts `source` into the converted copy `out` (all or nothing; a stale copy there is replaced)."""
  from ma_resnet.convert import ConversionError, convert_weights
  if os.path.lexists(out):
    logging.warning('Replacing %s (another architecture or source than the one asked for)', out)
    shutil.rmtree(out)
  with atomic_path(out, folder=True) as tmp:
    try:
      _, metadata = convert_weights(framework, source, tmp, depth=depth, include_classifier=False)
    except (ConversionError, OSError) as e:
      raise WeightsError(f'cannot convert {source} ({framework}, ResNet{depth}): {e}') from None
    arch = metadata['architecture']
    if variant is not None and (arch.get('depth'), arch.get('variant')) != (depth, variant):
      raise WeightsError(f'{source} converts to a ResNet{arch.get("depth")} ({arch.get("variant")}), not the '
                         f'ResNet{depth} ({variant}) of its catalogue entry')
    atomic_write_text(os.path.join(tmp, SOURCE_RECORD), json.dumps(record, indent=2, sort_keys=True) + '\n')
  return out


def prepare(name: str, *, progress: bool = False) -> str:
  """The converted copy of catalogue entry `name`: from the cache, or downloaded, checked and converted once.
  WeightsError (one line) when it cannot be had."""
  entry = get(name)
  out = converted_path(entry)
  with _lock(entry.name):
    if _cached(out, entry.depth, entry.variant, entry.accepts):
      return out
    path, digest = download(entry, progress=progress)
    record = {'name': entry.name, 'source': entry.source_url, 'file': path, 'sha256': digest,
              'published_checksum': entry.checksum, 'framework': entry.framework}
    return _convert(entry.framework, _unpacked(entry, path), out, depth=entry.depth, variant=entry.variant,
                    record=record)


def _state_dict_keys(path: str) -> list[str]:
  if path.lower().endswith('.safetensors'):
    from safetensors import safe_open
    with safe_open(path, framework='numpy') as f:
      return list(f.keys())
  from ma_resnet.convert.weight_files import state_dict_of
  return [k for k in state_dict_of(path)[0] if isinstance(k, str)]


def detect_framework(path: str) -> str:
  """The framework of an ImageNet weights file: '.pdparams' is paddle; otherwise from its keys: mmcv's
  ResNetV1c has a 'stem.*' (stem.0.weight), timm's deep-stem ResNets (resnet50d, resnet50c) 'conv1.0.weight',
  torchvision's ResNets (and timm's plain ones, which have the same keys) 'conv1.weight' + 'layer1.*'.
  WeightsError naming a few keys otherwise (and the prefix for the authors' trained models)."""
  if path.lower().endswith('.pdparams'):
    return 'paddle'
  try:
    keys = _state_dict_keys(path)
  except Exception as e:  # pylint: disable=broad-except  (torch / safetensors read errors)
    raise WeightsError(f'cannot read {path}: {e}') from None
  found = set(keys)
  if 'stem.0.weight' in found:
    return 'mmcv'
  if 'conv1.0.weight' in found:
    return 'timm'
  if 'conv1.weight' in found and any(k.startswith('layer1.') for k in found):
    return 'torchvision'
  hint = ''
  if any(k.startswith('decode_head.') for k in found):
    hint = ' (an mmseg segmentation model: the authors\' TMANet is init_from=tmanet:FILE)'
  elif any(k.startswith(('STF.', 'MAR.', 'pspnet.')) for k in found):
    hint = ' (the authors\' STF + MAR is init_from=stf_mar:FILE)'
  raise WeightsError(f'{path}: not ImageNet ResNet weights of a known layout{hint}; keys: '
                     f'{", ".join(sorted(found)[:6])}{", ..." if len(found) > 6 else ""}; name the framework '
                     f'with a prefix ({", ".join(p + ":FILE" for p in FRAMEWORKS)})')


def convert_file(path: str, *, depth: int, framework: str = '') -> str:
  """The converted copy of an ImageNet weights file given by path (converted once into the cache, keyed by the
  file's sha256, the framework and the depth); `framework` '' = `detect_framework`."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise WeightsError(f'{path} does not exist' if not os.path.exists(path) else f'{path} is not a file')
  framework = framework or detect_framework(path)
  digest = sha256_of(path)
  key = f'file-{digest[:16]}-{framework}-{depth}'
  out = os.path.join(cache_dir(), 'converted', key)
  with _lock(key):
    if _cached(out, depth, None, lambda sha: sha == digest):
      return out
    record = {'name': None, 'source': path, 'file': path, 'sha256': digest, 'published_checksum': None,
              'framework': framework}
    return _convert(framework, path, out, depth=depth, variant=None, record=record)


# ---------------------------------------------------------------------------------------------------------
# Command line.


def _status(entry: Entry) -> str:
  if os.path.isdir(converted_path(entry)):
    return 'converted'
  return 'downloaded' if os.path.isfile(download_path(entry)) else '-'


def table(markdown: bool = False) -> str:
  """The catalogue as a table: aligned text with a cache column, or markdown (the one in docs/weights.md)."""
  entries = list(catalogue().values())
  top1 = lambda e: f'{e.top1:.3f}' if e.top1 is not None else '—'
  if markdown:
    lines = [['name', 'source', 'checksum', 'converter', 'variant', 'depth', 'ImageNet top-1', 'top-1 reported by'],
             ['---'] * 5 + ['---:', '---:', '---']]
    lines += [[f'`{e.name}`', f'<{e.source_url}>', e.checksum, e.framework, e.variant, str(e.depth), top1(e),
               e.top1_source] for e in entries]
    return '\n'.join('| ' + ' | '.join(cells) + ' |' for cells in lines)
  lines = [['name', 'converter', 'variant', 'depth', 'top-1', 'checksum', 'cache', 'source']]
  lines += [[e.name, e.framework, e.variant, str(e.depth), top1(e), e.checksum, _status(e), e.source_url]
            for e in entries]
  widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m ma_resnet.weights', description=(
      f'The catalogue of pretrained ImageNet weights (cache: ${CACHE_ENV}, now {cache_dir()}).'))
  sub = parser.add_subparsers(dest='command', required=True)
  listing = sub.add_parser('list', help='print the catalogue')
  listing.add_argument('--markdown', action='store_true', help='as a markdown table (docs/weights.md)')
  fetch = sub.add_parser('fetch', help='download and convert ahead of time')
  fetch.add_argument('names', nargs='+', help="catalogue names, or 'all'")
  where = sub.add_parser('where', help='where an entry comes from and where its files go')
  where.add_argument('name')
  args = parser.parse_args(argv)
  try:
    if args.command == 'list':
      print(table(args.markdown))
    elif args.command == 'where':
      entry = get(args.name)
      top1 = '—' if entry.top1 is None else f'{entry.top1:.3f}'
      print(f'source: {entry.source_url}\nchecksum: {entry.checksum}\nconverter: {entry.framework} (ResNet'
            f'{entry.depth}, {entry.variant})\nImageNet top-1: {top1} ({entry.top1_source})\n'
            + (f'note: {entry.note}\n' if entry.note else '')
            + f'file (put it here by hand when offline): {download_path(entry)}\nconverted copy: '
            f'{converted_path(entry)}')
    else:
      for entry in [get(name) for name in (list(catalogue()) if args.names == ['all'] else args.names)]:
        try:
          print(f'{entry.name}: {prepare(entry.name, progress=sys.stderr.isatty())}', flush=True)
        except WeightsError as e:
          raise WeightsError(f'{entry.name}: {e}') from None
  except WeightsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
