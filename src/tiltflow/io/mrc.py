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


class SlabWriter:
    """Write a volume ``data[z, y, x]`` to an MRC file slab by slab (along y).

    Plain file writes, not a memory map: dirty pages of a mapped 8 GB
    tomogram would count against the process, ordinary writes do not.
    Header statistics are accumulated and written on :meth:`close`.

    Parameters
    ----------
    path : str or Path
    shape : (nz, ny, nx)
    dtype : "float32" or "float16"
    voxel_size_angstrom : float
    """

    def __init__(self, path, shape, dtype="float32", voxel_size_angstrom=1.0):
        import mrcfile

        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        mode = {np.dtype("float32"): 2, np.dtype("float16"): 12}[self.dtype]
        with mrcfile.new_mmap(self.path, shape=self.shape, mrc_mode=mode, overwrite=True) as mrc:
            mrc.voxel_size = voxel_size_angstrom
            self._offset = int(mrc.header.nbytes + mrc.extended_header.nbytes)
        self._file = open(self.path, "r+b")
        self._min, self._max, self._sum, self._sumsq, self._n = np.inf, -np.inf, 0.0, 0.0, 0

    def write(self, y0, block):
        """Write ``block (nz, rows, nx)`` at rows ``y0 .. y0 + rows``."""
        nz, ny, nx = self.shape
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[0] != nz or block.shape[2] != nx or y0 + block.shape[1] > ny:
            raise ValueError(f"slab of shape {block.shape} at y0={y0} does not fit a volume of shape {self.shape}")
        row_bytes = nx * self.dtype.itemsize
        for z in range(nz):
            self._file.seek(self._offset + (z * ny + y0) * row_bytes)
            self._file.write(block[z].tobytes())
        b = block.astype(np.float64)
        self._min = min(self._min, float(b.min()))
        self._max = max(self._max, float(b.max()))
        self._sum += float(b.sum())
        self._sumsq += float((b * b).sum())
        self._n += b.size

    def close(self):
        """Flush the data and write the header statistics."""
        import mrcfile

        if self._file is None:
            return
        self._file.close()
        self._file = None
        with mrcfile.mmap(self.path, mode="r+") as mrc:  # touches the header only
            if self._n:
                mean = self._sum / self._n
                mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = self._min, self._max, mean
                mrc.header.rms = float(np.sqrt(max(self._sumsq / self._n - mean * mean, 0.0)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def central_sections(path):
    """The central XY section and the central XZ section of a volume ``data[z, y, x]``.

    Returns
    -------
    xy : ndarray (ny, nx), float32
    xz : ndarray (nz, nx), float32
        ``xz[z, x]`` at the middle ``y`` (rows: z from bottom to top).
    voxel_angstrom : float
    """
    import mrcfile

    with mrcfile.mmap(path, mode="r") as mrc:
        data = mrc.data
        if data is None or data.ndim != 3:
            raise InputError(f"{path}: expected a volume data[z, y, x], found shape {getattr(data, 'shape', None)}")
        nz, ny, _ = data.shape
        return (np.array(data[nz // 2], dtype=np.float32), np.array(data[:, ny // 2, :], dtype=np.float32),
                float(mrc.voxel_size.x))
