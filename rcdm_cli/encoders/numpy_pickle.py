"""Reading plain pickles of numpy arrays (JAX, Haiku, TensorFlow-era releases) without
running anything in them.

``pickle.load`` on a downloaded file runs whatever the file names, so these files are
read by :class:`NumpyUnpickler`, which resolves a short list of names to harmless
stand-ins and refuses every other one *before* looking it up: no module is imported and
no code from the file runs. What it admits:

- numpy arrays (as every pickle protocol writes them), numpy scalars and dtypes, under
  the numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) module names;
- the way pickle protocol 2 spells bytes (``_codecs.encode(text, 'latin1')`` and
  ``bytes()``), which is how an array's raw data is stored by ``dill.dump(protocol=2)``;
- plain containers: dicts, lists, tuples, sets, ``collections.OrderedDict``;
- named tuples as dill writes them (``dill._dill._create_namedtuple``), rebuilt as
  local named tuples with the same fields; dill's array wrapper
  (``dill._dill._create_array``) for plain arrays;
- Haiku's ``frozendict`` and ``FlatMapping`` (rebuilt as dicts).

A plugin that needs one more harmless name passes it in ``extra_globals``.
:func:`rcdm_cli.plugin.load_numpy_pickle` reads a file with it.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, Mapping

import numpy as np


# numpy's own rebuilders, taken from its pickling so that the module they live in
# (numpy.core in numpy 1, numpy._core in numpy 2) does not matter.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # how protocol 5 rebuilds an array from its bytes
NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class PickleRefused(pickle.UnpicklingError):
    """The pickle names something that is not plain data (as opposed to a damaged file)."""


def _latin1_bytes(text: Any, encoding: Any = None) -> bytes:
    """Protocol 2 stores bytes as ``_codecs.encode(<latin-1 text>, 'latin1')``;
    nothing else is accepted under that name."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PickleRefused("_codecs.encode is accepted only to turn latin-1 text back into bytes")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Protocol 2's spelling of ``b''`` (the data of an empty array)."""
    if args:
        raise PickleRefused("bytes() is accepted only without arguments")
    return b""


def _namedtuple_class(name: Any, fields: Any, module: Any = None, defaults: Any = None) -> type:
    """Stands in for dill's ``_create_namedtuple``, which would import ``module`` to
    find the real class: a local named tuple with the same fields, nothing imported."""
    names = isinstance(fields, (tuple, list)) and all(isinstance(f, str) for f in fields)
    if not isinstance(name, str) or not names:
        raise PickleRefused("dill._dill._create_namedtuple with arguments that are not names")
    typename = name.rpartition(".")[2]
    return collections.namedtuple(typename if typename.isidentifier() else "Record", fields, rename=True)


def _dill_array(function: Any, args: Any, state: Any, npdict: Any = None) -> np.ndarray:
    """Stands in for dill's ``_create_array``: numpy's rebuilder only, for a plain array."""
    if function is not _RECONSTRUCT or npdict:
        raise PickleRefused("dill._dill._create_array is accepted only for plain numpy arrays")
    array = function(*args)
    array.__setstate__(state)
    return array


def _haiku_mapping(*args: Any) -> dict:
    """Haiku's ``frozendict`` and ``FlatMapping`` pickle as ``(cls, (plain dict,))``."""
    if len(args) != 1 or not isinstance(args[0], Mapping):
        raise PickleRefused("a Haiku mapping pickled with something other than a dict")
    return dict(args[0])


_HAIKU = "haiku._src.data_structures"
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _RECONSTRUCT for m in NUMPY_MODULES},
    **{(m, "scalar"): _SCALAR for m in NUMPY_MODULES},
    **{(m, "_frombuffer"): _FROMBUFFER for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(m, "set"): set for m in ("__builtin__", "builtins")},
    **{(m, "frozenset"): frozenset for m in ("__builtin__", "builtins")},
    **{(m, "_create_namedtuple"): _namedtuple_class for m in ("dill._dill", "dill.dill")},
    **{(m, "_create_array"): _dill_array for m in ("dill._dill", "dill.dill")},
    (_HAIKU, "frozendict"): _haiku_mapping,
    (_HAIKU, "FlatMapping"): _haiku_mapping,
}


class NumpyUnpickler(pickle.Unpickler):
    """Admits only :data:`ALLOWED_GLOBALS` (and ``extra_globals``); any other name is
    refused before it is looked up, so nothing is imported and no code runs."""

    def __init__(self, file, extra_globals: Mapping[tuple[str, str], Any] | None = None):
        super().__init__(file)
        self.allowed = {**ALLOWED_GLOBALS, **(extra_globals or {})}

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise PickleRefused(f"{module}.{name} is not a numpy array or a plain container")
        return found
