"""The weights catalogue (`ma_resnet.weights`): its entries, fetching from a real HTTP server on 127.0.0.1 (first
fetch and conversion, a cache hit without a request, a checksum mismatch, connection refused then a file put by
hand, a transfer cut in the middle, the hub), weights files given by path, `init_from`'s forms, the command line.
No network: every URL points at 127.0.0.1."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

import test_weights_support as support
from ma_resnet import weights

pytest.importorskip('torch', reason='the torchvision converter reads .pth files with torch')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def r18():
  """A torchvision ResNet18 state dict with random values, as torch.save writes it, and its sha256."""
  state_dict = support.resnet18_state_dict()
  data = support.torch_bytes(state_dict)
  return state_dict, data, support.sha256(data)


def tiny(url: str, **fields) -> dict:
  return {'framework': 'torchvision', 'depth': 18, 'variant': 'torchvision', 'url': url, **fields}


def assert_converted_from(path: str, state_dict) -> None:
  from ma_resnet.convert import load_converted
  variables, metadata = load_converted(path)
  assert metadata['architecture']['depth'] == 18 and metadata['architecture']['variant'] == 'torchvision'
  np.testing.assert_array_equal(variables['params']['stage2']['block0']['conv1']['conv']['kernel'],
                                np.transpose(state_dict['layer2.0.conv1.weight'], (2, 3, 1, 0)))


# ---------------------------------------------------------------------------------------------------------
# The catalogue.


def test_builtin_entries_are_complete_and_consistent(monkeypatch):
  monkeypatch.delenv(weights.CATALOGUE_ENV, raising=False)
  from ma_resnet.convert import FRAMEWORKS
  assert weights.FRAMEWORKS == tuple(FRAMEWORKS)
  entries = weights.catalogue()
  assert len(entries) == len(weights.CATALOGUE) >= 7
  for entry in entries.values():
    assert weights._check_entry(entry, 'built-in') is entry
    assert entry.top1 is not None or entry.top1_source.startswith('not published'), entry.name
    assert entry.top1_source, entry.name
    hashed = re.search(r'-([0-9a-f]{8})\.pth$', entry.file_name)
    assert (hashed.group(1) if hashed else '') == entry.sha256_prefix, entry.name  # the prefix is the file's
  # The recipes' own initialisations.
  arch = {name: (e.framework, e.variant, e.depth) for name, e in entries.items()}
  assert arch['mmcv_resnet50_v1c'] == ('mmcv', 'v1c', 50) and arch['mmcv_resnet101_v1c'] == ('mmcv', 'v1c', 101)
  assert arch['paddleseg_resnet50_vd_ssld_v2'] == ('paddle', 'vd', 50)
  assert arch['timm_resnet50d'] == ('timm', 'vd', 50) and arch['timm_resnet50c'] == ('timm', 'v1c', 50)
  assert entries['torchvision_resnet50_v1'].top1 == 76.130 and entries['torchvision_resnet50_v2'].top1 == 80.858


def test_the_docs_table_is_the_catalogue(monkeypatch):
  monkeypatch.delenv(weights.CATALOGUE_ENV, raising=False)
  with open(os.path.join(REPO, 'docs', 'weights.md')) as f:
    assert weights.table(markdown=True) in f.read()  # python -m ma_resnet.weights list --markdown


def test_a_catalogue_file_updates_and_adds_entries_and_bad_ones_are_named(tmp_path, monkeypatch):
  support.use_catalogue(monkeypatch, str(tmp_path), {
      'timm_resnet50d': {'sha256': 'ab' * 32}, 'mine': tiny('http://127.0.0.1:1/mine.pth')})
  entries = weights.catalogue()
  assert entries['timm_resnet50d'].sha256 == 'ab' * 32 and entries['timm_resnet50d'].hf_repo  # pinned, kept
  assert entries['mine'].depth == 18 and entries['mine'].key == 'unpinned'
  for bad, message in (({'x': {'colour': 1}}, "entry 'x': unknown fields"),
                       ({'x': tiny('http://h/x.pth', depth=19)}, 'depth must be'),
                       ({'x': tiny('http://h/x.pth', sha256='XYZ')}, 'sha256 must be'),
                       ({'x': {'framework': 'torchvision'}}, "entry 'x'")):
    support.use_catalogue(monkeypatch, str(tmp_path), bad)
    with pytest.raises(weights.WeightsError, match=re.escape(str(tmp_path / 'catalogue.json')) + '.*' + message):
      weights.catalogue()


def test_init_from_forms():
  parse = weights.parse_init_from
  assert parse('') == weights.InitFrom('none')
  assert parse('mmcv_resnet50_v1c') == weights.InitFrom('catalogue', 'mmcv_resnet50_v1c')
  assert parse('/w/r50.PTH') == weights.InitFrom('weights', '/w/r50.PTH')
  assert parse('timm:/w/model.safetensors') == weights.InitFrom('weights', '/w/model.safetensors', 'timm')
  assert parse('tmanet:/w/tmanet.pth') == weights.InitFrom('authors', '/w/tmanet.pth', 'tmanet')
  assert parse('runs/camvid') == weights.InitFrom('path', 'runs/camvid')
  with pytest.raises(weights.WeightsError, match="unknown prefix 'tma'.*tmanet:FILE"):
    parse('tma:/w/x.pth')


# ---------------------------------------------------------------------------------------------------------
# Fetching from a real HTTP server.


def test_first_fetch_converts_once_then_the_cache_answers_without_a_request(r18, tmp_path, monkeypatch):
  state_dict, data, sha = r18
  name = f'/resnet18-{sha[:8]}.pth'
  with support.WeightsServer({name: data}) as server:
    cache = support.use_catalogue(monkeypatch, str(tmp_path), {
        'full': tiny(server.url(name), sha256=sha), 'prefix': tiny(server.url(name), sha256_prefix=sha[:8])})
    path = weights.prepare('full')
    assert path == os.path.join(cache, 'converted', f'full-{sha[:16]}') and server.requests == [name]
    assert_converted_from(path, state_dict)
    assert os.path.isfile(os.path.join(cache, 'downloads', 'full', name[1:]))
    assert weights.prepare('full') == path and server.requests == [name]  # cache hit: no request
    os.remove(os.path.join(cache, 'downloads', 'full', name[1:]))
    assert weights.prepare('full') == path and server.requests == [name]  # the converted copy is enough
    assert weights.prepare('prefix') == os.path.join(cache, 'converted', f'prefix-{sha[:8]}')  # 8-hex prefix
    assert server.requests == [name, name]


def test_a_checksum_mismatch_deletes_the_download_and_converts_nothing(r18, tmp_path, monkeypatch):
  _, data, sha = r18
  with support.WeightsServer({'/r18.pth': data}) as server:
    cache = support.use_catalogue(monkeypatch, str(tmp_path), {
        'wrong': tiny(server.url('/r18.pth'), sha256='0' * 64),
        'wrong_prefix': tiny(server.url('/r18.pth'), sha256_prefix='0badf00d')})
    for name, published in (('wrong', 'sha256 ' + '0' * 64), ('wrong_prefix', 'sha256 prefix 0badf00d')):
      with pytest.raises(weights.WeightsError) as error:
        weights.prepare(name)
      message = str(error.value)
      assert '\n' not in message and published in message and sha in message and 'deleted it' in message
      assert support.files_under(cache) == []  # no download kept (no partial file either), nothing converted
    assert server.requests == ['/r18.pth', '/r18.pth']


def test_connection_refused_names_the_url_and_the_path_then_a_file_put_there_works(r18, tmp_path, monkeypatch):
  state_dict, data, sha = r18
  url = support.closed_port_url(f'/resnet18-{sha[:8]}.pth')
  cache = support.use_catalogue(monkeypatch, str(tmp_path), {'offline': tiny(url, sha256_prefix=sha[:8])})
  entry = weights.get('offline')
  with pytest.raises(weights.WeightsError) as error:
    weights.prepare('offline')
  message = str(error.value)
  assert '\n' not in message and url in message and weights.download_path(entry) in message
  assert 'Connection refused' in message
  assert support.files_under(cache) == []
  os.makedirs(os.path.dirname(weights.download_path(entry)), exist_ok=True)
  with open(weights.download_path(entry), 'wb') as f:  # the user puts the file there by hand
    f.write(data)
  path = weights.prepare('offline')  # the same call now works (and asks no server)
  assert_converted_from(path, state_dict)


def test_a_transfer_cut_in_the_middle_leaves_nothing_a_later_run_accepts(r18, tmp_path, monkeypatch):
  state_dict, data, sha = r18
  with support.WeightsServer({'/r18.pth': data}) as server:
    cache = support.use_catalogue(monkeypatch, str(tmp_path), {
        'cut': tiny(server.url('/r18.pth'), sha256=sha), 'cut_unpinned': tiny(server.url('/r18.pth'))})
    server.cut.add('/r18.pth')
    for name in ('cut', 'cut_unpinned'):  # without a checksum too: the partial file is never renamed
      with pytest.raises(weights.WeightsError, match=r'^[^\n]*cannot download .*IncompleteRead.*put that file at'):
        weights.prepare(name)
      assert support.files_under(cache) == []
    # A truncated file where the download goes (e.g. copied by hand) is not accepted either: downloaded again.
    os.makedirs(os.path.dirname(weights.download_path(weights.get('cut'))), exist_ok=True)
    with open(weights.download_path(weights.get('cut')), 'wb') as f:
      f.write(data[:1000])
    server.cut.clear()
    assert_converted_from(weights.prepare('cut'), state_dict)
    assert server.requests == ['/r18.pth'] * 3


def test_a_hub_file_is_checked_against_the_sha256_the_hub_gives(r18, tmp_path, monkeypatch):
  state_dict, data, sha = r18
  hub_file = '/org/tiny/resolve/main/model.pth'
  with support.WeightsServer({hub_file: data}) as server:
    cache = support.use_catalogue(monkeypatch, str(tmp_path), {'hub': {
        'framework': 'torchvision', 'depth': 18, 'variant': 'torchvision', 'hf_repo': 'org/tiny',
        'hf_filename': 'model.pth', 'hf_endpoint': server.url()}})
    server.etags[hub_file] = '1' * 64  # the hub announces another file
    with pytest.raises(weights.WeightsError, match='does not match its published checksum.*deleted it'):
      weights.prepare('hub')
    assert support.files_under(cache) == []
    del server.etags[hub_file]
    path = weights.prepare('hub')
    assert_converted_from(path, state_dict)
    with open(os.path.join(path, weights.SOURCE_RECORD)) as f:
      assert sha in f.read()  # recorded, so it can be pinned


# ---------------------------------------------------------------------------------------------------------
# Weights files given by path.


def test_a_weights_file_is_converted_once_keyed_by_its_sha256(r18, tmp_path, monkeypatch):
  state_dict, data, sha = r18
  cache = support.use_catalogue(monkeypatch, str(tmp_path), {})
  path = tmp_path / 'r18.pth'
  path.write_bytes(data)
  out = weights.convert_file(str(path), depth=18)
  assert out == os.path.join(cache, 'converted', f'file-{sha[:16]}-torchvision-18')
  assert_converted_from(out, state_dict)
  stamp = os.stat(os.path.join(out, 'metadata.json')).st_mtime_ns
  assert weights.convert_file(str(path), depth=18) == out
  assert os.stat(os.path.join(out, 'metadata.json')).st_mtime_ns == stamp  # not converted again
  with pytest.raises(weights.WeightsError, match='cannot convert .*ResNet34'):
    weights.convert_file(str(path), depth=34)
  assert not os.path.exists(os.path.join(cache, 'converted', f'file-{sha[:16]}-torchvision-34'))


@pytest.mark.parametrize('keys, framework', [
    (('conv1.weight', 'bn1.weight', 'layer1.0.conv1.weight'), 'torchvision'),
    (('stem.0.weight', 'stem.1.weight', 'layer1.0.conv1.weight'), 'mmcv'),
    (('conv1.0.weight', 'conv1.1.weight', 'layer1.0.conv1.weight'), 'timm'),
])
def test_the_framework_is_detected_from_the_keys(keys, framework, tmp_path):
  path = str(tmp_path / 'w.pth')
  with open(path, 'wb') as f:
    f.write(support.torch_bytes({k: np.zeros((1,), np.float32) for k in keys}))
  assert weights.detect_framework(path) == framework
  from safetensors.numpy import save_file
  save_file({k: np.zeros((1,), np.float32) for k in keys}, str(tmp_path / 'w.safetensors'))
  assert weights.detect_framework(str(tmp_path / 'w.safetensors')) == framework
  assert weights.detect_framework(str(tmp_path / 'w.pdparams')) == 'paddle'  # by the suffix


def test_an_unknown_layout_is_named_with_a_hint(tmp_path):
  path = str(tmp_path / 'tmanet.pth')
  with open(path, 'wb') as f:
    f.write(support.torch_bytes({'decode_head.conv_seg.weight': np.zeros((1,), np.float32)}))
  with pytest.raises(weights.WeightsError, match='not ImageNet ResNet weights.*tmanet:FILE.*decode_head'):
    weights.detect_framework(path)


# ---------------------------------------------------------------------------------------------------------
# Command line.


def test_command_line_lists_fetches_and_says_where(r18, tmp_path, monkeypatch, capsys):
  _, data, sha = r18
  with support.WeightsServer({'/r18.pth': data}) as server:
    cache = support.use_catalogue(monkeypatch, str(tmp_path), {'tiny': tiny(server.url('/r18.pth'), sha256=sha)})
    assert weights.main(['list']) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in weights.catalogue())
    assert weights.main(['fetch', 'tiny']) == 0
    assert capsys.readouterr().out.strip() == f'tiny: {os.path.join(cache, "converted", "tiny-" + sha[:16])}'
    assert weights.main(['list']) == 0
    assert re.search(r'^tiny .* converted ', capsys.readouterr().out, re.M)
    assert weights.main(['where', 'tiny']) == 0
    assert os.path.join(cache, 'downloads', 'tiny', 'r18.pth') in capsys.readouterr().out
    assert weights.main(['fetch', 'nope']) == 1
    assert capsys.readouterr().err.startswith("error: 'nope' is not in the weights catalogue")
