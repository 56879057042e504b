"""Helpers of the weights tests (no tests here): a real HTTP server on 127.0.0.1 serving generated weight files,
a torchvision-format ResNet18 state dict with random values, catalogue entries pointing at the server.

    with WeightsServer({'/r18-1234abcd.pth': data}) as server:
      server.url('/r18-1234abcd.pth'); server.requests    # the paths asked for, in order
      server.cut.add('/r18-1234abcd.pth')                  # announce the whole length, send half, close

It also answers as a Hugging Face hub would for `/<org>/<repo>/resolve/<revision>/<file>` (HEAD: the commit and
the file's sha256 as its ETag; GET: the bytes), so hub entries go through `huggingface_hub` unchanged.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import threading

import numpy as np

from ma_resnet import weights

HUB_PATH = re.compile(r'/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)')
COMMIT = '0123456789abcdef0123456789abcdef01234567'


class WeightsServer:
  """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a thread, serving `files` {path: bytes}."""

  def __init__(self, files: dict[str, bytes]):
    self.files, self.requests, self.cut, self.etags = dict(files), [], set(), {}
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def _answer(self, body_too: bool):
        path = self.path.split('?')[0]
        server.requests.append(path)
        body = server.files.get(path)
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        if HUB_PATH.fullmatch(path):
          self.send_header('X-Repo-Commit', COMMIT)
          self.send_header('ETag', '"%s"' % server.etags.get(path, hashlib.sha256(body).hexdigest()))
        self.end_headers()
        if body_too:
          self.wfile.write(body[:len(body) // 2] if path in server.cut else body)
          self.wfile.flush()
          self.close_connection = True  # a cut transfer: fewer bytes than announced, then the socket closes

      def do_GET(self):  # noqa: N802  (http.server's names)
        self._answer(True)

      def do_HEAD(self):  # noqa: N802
        self._answer(False)

      def log_message(self, *args):
        pass

    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  def url(self, path: str = '') -> str:
    return f'http://127.0.0.1:{self._httpd.server_address[1]}{path}'

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._httpd.shutdown()
    self._httpd.server_close()


def closed_port_url(path: str) -> str:
  """A URL on 127.0.0.1 where nothing listens (connection refused)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}{path}'


def resnet18_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A torchvision ResNet18 state dict (no classifier), random values."""
  from ma_resnet.convert.torchvision import key_table
  rng = np.random.default_rng(seed)
  table = key_table(18, include_classifier=False)
  return {k: rng.standard_normal(e.shape, dtype=np.float32) for k, e in table.entries.items()}


def torch_bytes(state_dict: dict[str, np.ndarray]) -> bytes:
  """`state_dict` as torch.save writes it (tensors)."""
  import torch
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, buffer)
  return buffer.getvalue()


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def use_catalogue(monkeypatch, folder, entries: dict[str, dict]) -> str:
  """Points $MA_RESNET_CACHE at `folder`/cache and $MA_RESNET_CATALOGUE at a file of `entries`; returns the cache."""
  cache = os.path.join(folder, 'cache')
  path = os.path.join(folder, 'catalogue.json')
  with open(path, 'w') as f:
    json.dump(entries, f)
  monkeypatch.setenv(weights.CACHE_ENV, cache)
  monkeypatch.setenv(weights.CATALOGUE_ENV, path)
  return cache


def files_under(folder: str) -> list[str]:
  """Every file below `folder` (relative paths), hidden ones included, but the cache's locks."""
  return sorted(os.path.relpath(os.path.join(root, n), folder) for root, _, names in os.walk(folder) for n in names
                if not n.endswith('.lock'))
