"""Safe readers of the raw ground-truth files: a pickle unpickler that accepts plain data and numpy
arrays only, and MATLAB ``.mat`` files (v5 through scipy, v7.3/HDF5 through h5py) as plain fields."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.errors import SourceError

__all__ = ["load_mat", "load_pickle"]


# ---------------------------------------------------------------------------- pickle (safe)


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The callables numpy arrays and scalars pickle through, under every module path numpy
    has used; taken from numpy's own ``__reduce__`` so no deprecated module is imported."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    # Protocol-2 pickles store bytes through _codecs.encode, and sets through builtins.set.
    allowed[("_codecs", "encode")] = codecs.encode
    for module in ("builtins", "__builtin__"):
        for builtin in (set, frozenset, bytearray, complex):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays, and nothing else.

    A ``.pkl`` downloaded from the internet can name any callable (``os.system``) and have it
    run while loading; refusing every global outside the allow-list makes loading it inert.
    """

    _allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def load_pickle(path: Path) -> dict[str, Any]:
    """Load a gnd pickle safely; arrays become numpy arrays, the rest plain Python."""
    try:
        with path.open("rb") as stream:
            # latin1: how numpy arrays pickled by Python 2 (as the 2018 files were) must be read.
            data = _DataOnlyUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as exc:
        raise SourceError(f"cannot read {path} as a ground-truth pickle: {exc}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a pickled dict with 'imlist', 'qimlist' and 'gnd'")
    gnd = data.get("gnd")
    if isinstance(gnd, (tuple, np.ndarray)):
        data = {**data, "gnd": list(gnd)}
    return data


# ------------------------------------------------------------------------------------- MATLAB


def load_mat(path: Path) -> dict[str, Any]:
    """Read a gnd ``.mat`` into plain fields; MATLAB 7.3 files are HDF5, older ones are not."""
    import h5py  # lazily: only the .mat readers need h5py/scipy

    if h5py.is_hdf5(path):
        return _load_mat73(path)
    return _load_mat5(path)


def _load_mat5(path: Path) -> dict[str, Any]:
    """MATLAB 5 files (Holidays, INSTRE) through scipy."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=True)
    except Exception as exc:  # scipy raises many types for a corrupt file; all mean "bad file"
        raise SourceError(f"cannot read {path} as a MATLAB file: {exc}") from None
    fields: dict[str, Any] = {}
    for key in ("imlist", "qimlist", "q_name"):
        if key in mat:
            fields[key] = [_mat5_string(cell, path) for cell in np.asarray(mat[key]).ravel()]
    if "qidx" in mat:
        fields["qidx"] = mat["qidx"]
    if "gnd" in mat:
        fields["gnd"] = _mat5_records(mat["gnd"], path)
    return fields


def _mat5_string(cell: Any, path: Path) -> str:
    """One cell of a MATLAB cell array of strings."""
    values = np.asarray(cell).ravel()
    if values.dtype.kind not in "US":
        raise SourceError(f"{path}: expected a cell array of strings")
    return "".join(str(v) for v in values)


def _mat5_records(gnd: Any, path: Path) -> list[dict[str, Any]]:
    """A MATLAB struct array as a list of field → array dicts."""
    array = np.asarray(gnd)
    if array.dtype.names is None:
        raise SourceError(f"{path}: 'gnd' must be a struct array")
    return [{f: record[f] for f in array.dtype.names} for record in array.ravel()]


def _load_mat73(path: Path) -> dict[str, Any]:
    """MATLAB 7.3 files (Oxford5k, Paris6k) through h5py: cells and struct fields hold
    references to the real datasets, char arrays are uint16 code points."""
    import h5py

    try:
        with h5py.File(path, "r") as mat:
            fields: dict[str, Any] = {}
            for key in ("imlist", "qimlist", "q_name"):
                if key in mat:
                    fields[key] = [_h5_string(mat[ref]) for ref in mat[key][()].ravel()]
            if "qidx" in mat:
                fields["qidx"] = _h5_array(mat["qidx"])
            if "gnd" in mat:
                fields["gnd"] = _h5_records(mat, mat["gnd"], path)
            return fields
    except SourceError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/TypeError/ValueError for bad content
        raise SourceError(f"cannot read {path} as a MATLAB 7.3 file: {exc}") from None


def _h5_array(dataset: Any) -> np.ndarray:
    """A numeric MATLAB array; MATLAB writes an empty one as its shape, flagged MATLAB_empty."""
    if dataset.attrs.get("MATLAB_empty", 0):
        return np.zeros(0)
    return np.asarray(dataset[()])


def _h5_string(dataset: Any) -> str:
    """A MATLAB char array (uint16 code points) as a str."""
    return "".join(chr(int(c)) for c in _h5_array(dataset).ravel())


def _h5_records(mat: Any, group: Any, path: Path) -> list[dict[str, Any]]:
    """A MATLAB struct array: one dataset of references per field, one reference per record."""
    import h5py

    if not isinstance(group, h5py.Group):
        raise SourceError(f"{path}: 'gnd' must be a struct array")
    columns = {}
    for field in group:
        refs = group[field][()]
        if refs.dtype != h5py.ref_dtype:  # a 1x1 struct stores its fields inline
            columns[field] = [np.asarray(refs)]
        else:
            columns[field] = [_h5_array(mat[ref]) for ref in refs.ravel()]
    counts = {len(v) for v in columns.values()}
    if len(counts) > 1:
        raise SourceError(f"{path}: the fields of 'gnd' have different lengths")
    count = counts.pop() if counts else 0
    return [{f: values[i] for f, values in columns.items()} for i in range(count)]
