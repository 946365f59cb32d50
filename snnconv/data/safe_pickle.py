"""Load the official CIFAR python pickles without running code.

A pickle can name any importable callable (``os.system``...) and the unpickler calls
it. The official CIFAR batches only hold dicts, lists, str/bytes, ints and numpy
arrays, and a numpy array needs exactly three globals: ``_reconstruct`` (spelled
``numpy.core.multiarray`` by numpy 1, which wrote the official files, and
``numpy._core.multiarray`` by numpy 2), ``numpy.ndarray`` and ``numpy.dtype``.
:class:`RestrictedUnpickler` resolves those three and refuses every other global, so a
crafted file fails to load instead of executing anything.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import SnnconvError

try:  # numpy >= 2: numpy.core is a deprecated alias; use the real module without the warning
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses every other global."""

    def find_class(self, module: str, name: str):
        """Resolve ``module.name`` only if it is in :data:`ALLOWED_GLOBALS`.

        Raises:
            pickle.UnpicklingError: any other global (:func:`load_pickle` reports it as
                :class:`SnnconvError`).
        """
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file") from None


def load_pickle(path: Path, fix: str) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; ``fix`` tells the user what to do on failure.

    The official files were written by Python 2, so byte strings are decoded as latin-1
    (numpy's own advice for its arrays inside Python 2 pickles).

    Raises:
        SnnconvError: ``path`` is missing, holds a global outside
            :data:`ALLOWED_GLOBALS` (refused before anything runs), or is corrupt or truncated;
            the message ends with ``fix``.
    """
    if not path.is_file():
        raise SnnconvError(f"missing file {str(path)!r}: {fix}")
    try:
        raw = path.read_bytes()
        return RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        if "not allowed" in str(err):
            raise SnnconvError(f"{str(path)!r} refused: {err} (snnconv never runs code from data files): {fix}") from err
        raise SnnconvError(f"cannot read {str(path)!r} ({err}): the file is corrupt or truncated; {fix}") from err
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise SnnconvError(f"cannot read {str(path)!r} ({type(err).__name__}: {err}): the file is corrupt or truncated; {fix}") from err
