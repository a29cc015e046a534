"""Cluster resources of the heavy jobs, computed from the stack's MRC header.

Snakemake evaluates these when a job is ready to run (its stack exists), so
each coarse alignment and reconstruction asks the scheduler for what *its*
stack needs: threads, memory (``mem_mb``) and wall time (``runtime``,
minutes).  The light jobs (marker import, L-M stages, outputs, plots) use
the profile's ``default-resources``.  Standard library only: this runs
while the DAG is built.

The figures are upper bounds fitted to measurements (README, "Running on a
cluster"): the coarse alignment peaked at 0.58 GB resident for a
61 x 512 x 512 stack (64 MB as float32), at 0.87 GB for 61 x 1024 x 1024
(256 MB; benchmarks/bench_coarse.py, which also holds the simulation) and
ran in 5 s on 2 cores there; the reconstruction of 2048 x 2048 x 500 from 61 views of
2048 x 2048 (1 GB of float32) peaked at 2.9 GB, 1.1 GB of it the stack's
pages, and took 88 s on 2 cores.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path

#: Bytes per voxel of the MRC modes tiltflow reads (mode 101: 4-bit, two per byte).
MODE_BYTES = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2, 101: 0.5}

#: Interpreter, numpy, scipy and numba of one job, MB.
BASE_MB = 600


@dataclasses.dataclass(frozen=True)
class StackHeader:
    """Size of an MRC stack from its header: ``nx`` x ``ny`` pixels, ``nz`` views, ``mode``."""

    nx: int
    ny: int
    nz: int
    mode: int

    @property
    def float_mb(self):
        """The stack as float32, MB (what the image code holds of it)."""
        return self.nx * self.ny * self.nz * 4 / 1e6

    @property
    def file_mb(self):
        """The stack's data on disk, MB (its pages once memory-mapped and read)."""
        return self.nx * self.ny * self.nz * MODE_BYTES.get(self.mode, 4) / 1e6


@dataclasses.dataclass(frozen=True)
class JobResources:
    """What one job asks the scheduler for."""

    threads: int
    mem_mb: int
    runtime: int  # minutes


def read_header(path):
    """The dimensions and mode of an MRC file (first 16 bytes of its header; either byte order).

    Raises
    ------
    ValueError
        The file is shorter than an MRC header or its dimensions are not positive.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if len(head) < 1024:
        raise ValueError(f"{path}: {len(head)} bytes, shorter than the 1024-byte MRC header")
    for order in "<>":
        nx, ny, nz, mode = struct.unpack(order + "4i", head[:16])
        if 0 < nx < 1 << 20 and 0 < ny < 1 << 20 and 0 < nz < 1 << 20 and 0 <= mode < 1 << 10:
            return StackHeader(nx, ny, nz, mode)
    raise ValueError(f"{path}: the MRC header gives no positive nx, ny, nz (read {nx}, {ny}, {nz})")


def _threads(float_mb, most):
    """2 threads up to 256 MB of float32 stack, one more per further 256 MB, at most ``most``."""
    return int(min(most, max(2, math.ceil(float_mb / 256))))


def coarse_resources(header: StackHeader):
    """Coarse alignment from images: cross-correlation of binned views, the tilt-axis search."""
    return JobResources(
        threads=_threads(header.float_mb, 4),
        mem_mb=int(BASE_MB + header.file_mb + 2 * header.float_mb),
        runtime=int(10 + math.ceil(5 * header.float_mb / 1000)),
    )


def reconstruct_resources(header: StackHeader, binning=1, thickness=200, binned_updates_per_second=2.5e8):
    """Weighted back-projection: filtered binned views in memory, the volume written in slabs.

    ``binned_updates_per_second`` is a pessimistic rate per job (the
    benchmark gives 1.0-4.2e9 voxel-view updates per second on 2 cores).
    """
    b = max(1, int(binning))
    views_mb = 1.5 * header.float_mb / (b * b)
    updates = (header.nx / b) * (header.ny / b) * (thickness / b) * header.nz
    return JobResources(
        threads=_threads(header.float_mb, 8),
        mem_mb=int(BASE_MB + header.file_mb + views_mb),
        runtime=int(10 + math.ceil(updates / binned_updates_per_second / 60)),
    )


def stack_resources(kind, stack, binning=1, thickness=200):
    """:class:`JobResources` of a ``"coarse"`` or ``"reconstruct"`` job on ``stack`` (path or None).

    Without a stack, or before it exists (a stack another rule makes: the
    values are computed again when the job is ready), a light job's: one
    thread, :data:`BASE_MB`, 10 minutes.
    """
    if not stack or not Path(stack).is_file():
        return JobResources(1, BASE_MB, 10)
    header = read_header(stack)
    if kind == "coarse":
        return coarse_resources(header)
    if kind == "reconstruct":
        return reconstruct_resources(header, binning, thickness)
    raise ValueError(f"kind must be 'coarse' or 'reconstruct', got {kind!r}")
