"""MRC tilt-series stacks: memory-mapped, one view at a time."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import InputError

#: MRC modes read: int8/uint8, int16, float32, uint16, float16.
SUPPORTED_MODES = (0, 1, 2, 6, 12)


class Stack:
    """A memory-mapped MRC stack of views along z.

    Use as a context manager::

        with Stack(path) as st:
            view = st.view(0)      # float32, (ny, nx)

    Attributes
    ----------
    path : Path
    n_views : int
    shape : tuple (ny, nx)
    pixel_size_angstrom : float
        From the header (0 when not recorded).
    mode : int

    Raises
    ------
    InputError
        Missing, non-MRC or truncated file, unsupported mode (names the
        file and what was expected).
    """

    def __init__(self, path):
        import mrcfile

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: stack not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._mrc = mrcfile.mmap(self.path, mode="r", permissive=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{self.path}: not a readable MRC stack ({exc})") from None
        h = self._mrc.header
        self.mode = int(h.mode)
        if self.mode not in SUPPORTED_MODES:
            self.close()
            raise InputError(f"{self.path}: MRC mode {self.mode} is not supported (expected one of {SUPPORTED_MODES})")
        data = self._mrc.data
        if data is None or data.ndim not in (2, 3):
            self.close()
            raise InputError(f"{self.path}: expected a stack of 2D views, found data of shape {getattr(data, 'shape', None)}")
        self._data = data if data.ndim == 3 else data[None]
        # IMOD writes mode 0 as unsigned bytes unless flagged signed; trust the header's minimum
        self._unsigned_bytes = self.mode == 0 and float(h.dmin) >= 0
        self.n_views = int(self._data.shape[0])
        self.shape = tuple(int(s) for s in self._data.shape[1:])
        self.pixel_size_angstrom = float(self._mrc.voxel_size.x)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "_mrc", None) is not None:
            self._mrc.close()
            self._mrc = None

    def __len__(self):
        return self.n_views

    def __getitem__(self, index):
        return self.view(int(index))

    def view(self, index):
        """View ``index`` as float32 ``(ny, nx)``, checked for NaN/Inf and constancy.

        Raises
        ------
        InputError
            Names the file and the view.
        """
        if not 0 <= index < self.n_views:
            raise InputError(f"{self.path}: view {index} does not exist (stack has views 0..{self.n_views - 1})")
        raw = self._data[index]
        if self._unsigned_bytes:
            raw = raw.view(np.uint8)
        img = np.asarray(raw, dtype=np.float32)
        if not np.isfinite(img).all():
            bad = int((~np.isfinite(img)).sum())
            raise InputError(f"{self.path}: view {index} has {bad} NaN or Inf pixel(s); expected finite intensities")
        if float(img.max()) == float(img.min()):
            raise InputError(f"{self.path}: view {index} is constant ({img.flat[0]}); expected an image")
        return img


def write_stack(path, data, pixel_size_angstrom=1.0):
    """Write ``data (n_views, ny, nx)`` as an MRC stack (float64 is stored as float32)."""
    import mrcfile

    data = np.asarray(data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = pixel_size_angstrom
        mrc.header.ispg = 0
        mrc.update_header_stats()
