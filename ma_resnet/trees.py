"""Variables by path: the one flatten and the one graft of the package, on `flax.traverse_util`.

    flat = flatten(state)                 # {'params/backbone/stem/conv1/conv/kernel': array, 'step': 0, ...}
    variables = unflatten(flat)           # nested dicts again
    params = graft(params, {'backbone/stem/conv1/conv/kernel': new})   # those leaves replaced, the rest kept

A path names a leaf by the keys from the root, joined by '/': dict keys, the fields of Flax struct dataclasses
(`TrainState`) and NamedTuples (optax states, the temporal modules' memories), list positions; the names
`flax.serialization.to_state_dict` gives them, the ones Orbax stores.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from flax import serialization, traverse_util

SEP = '/'


def flatten(tree) -> dict[str, Any]:
  """'a/b/c' -> leaf for every leaf of `tree` (nested dicts, struct dataclasses, NamedTuples, lists); an empty
  node has no entry."""
  return traverse_util.flatten_dict(serialization.to_state_dict(tree), sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b': x, 'a/c': y} -> {'a': {'b': x, 'c': y}}: the inverse of `flatten` on nested dicts."""
  return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def graft(tree: Mapping, values: Mapping[str, Any], cast: Callable[[Any, Any], Any] | None = None) -> dict:
  """`tree` (nested dicts) with the leaf at each path of `values` replaced by that value (`cast(value, leaf)`
  when given: e.g. to the leaf's dtype); every other leaf, and every empty node, kept as it is."""
  flat = traverse_util.flatten_dict(tree, keep_empty_nodes=True, sep=SEP)
  for path, value in values.items():
    if path in flat:
      flat[path] = cast(value, flat[path]) if cast is not None else value
  return traverse_util.unflatten_dict(flat, sep=SEP)
