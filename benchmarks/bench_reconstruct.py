"""Back-projection speed and memory.

1. Throughput: voxel-view updates per second of ``tiltflow.reconstruct``
   (numba line-table kernel at oversampling 16 and 32, all threads) for a
   512 x 512 x 200 volume from 61 views (``--size``, ``--thickness``),
   beside scikit-image's ``iradon`` (filtered back-projection of each
   x-z slice from its sinogram, same sizes, linear interpolation) when
   scikit-image is installed.
2. Memory: peak resident memory of reconstructing a 2048 x 2048 x 500
   tomogram from 61 views of 2048 x 2048 (``--big``; several minutes),
   measured in a child process (``resource.getrusage`` max RSS; the input
   stack is written through a memory map first, so the figure includes
   its pages).

Usage:  python benchmarks/bench_reconstruct.py [--big]
Writes benchmarks/out/reconstruct.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from tiltflow import reconstruct


def geometry(n_views, size):
    tilt = np.linspace(-60, 60, n_views)
    a = np.deg2rad(-12.0)
    xf = np.tile([np.cos(a), np.sin(a), -np.sin(a), np.cos(a), 3.0, -2.0], (n_views, 1))
    return xf, tilt


def throughput(size=512, thickness=200, n_views=61, repeats=3, oversampling=(16, 32)):
    rng = np.random.default_rng(0)
    views = rng.normal(size=(n_views, size, size)).astype(np.float32)
    xf, tilt = geometry(n_views, size)
    reconstruct.reconstruct(views[:, :64, :64], xf, tilt, reconstruct.ReconOptions(thickness_px=8, binning=1))  # JIT
    out = {"size": size, "thickness": thickness, "views": n_views, "threads": numba.get_num_threads()}
    for q in oversampling:
        opts = reconstruct.ReconOptions(thickness_px=thickness, binning=1, slab_rows=64, oversampling=q)
        rates = []
        for _ in range(repeats):
            _, st = reconstruct.reconstruct(views, xf, tilt, opts)
            rates.append(st["voxels"] * st["views"] / st["seconds"])
        out[f"oversampling_{q}"] = {"updates_per_second": float(np.median(rates)),
                                    "backprojection_seconds": st["seconds"]}
    out["updates_per_second"] = out[f"oversampling_{oversampling[0]}"]["updates_per_second"]
    out["filter_seconds"] = st["filter_seconds"]
    try:
        from skimage.transform import iradon
    except ImportError:
        out["iradon"] = "scikit-image not installed"
        return out
    # iradon reconstructs a size x size slice from a (size, n_views) sinogram; time a few x-z slices
    sino = rng.normal(size=(size, n_views))
    iradon(sino[:, :5], theta=tilt[:5], filter_name="ramp", interpolation="linear", circle=False)
    t0 = time.perf_counter()
    n_slices = 4
    for _ in range(n_slices):
        iradon(sino, theta=tilt, filter_name="ramp", interpolation="linear", circle=False)
    per_slice = (time.perf_counter() - t0) / n_slices
    # iradon computes a size x size square per slice; count the voxels it updates
    out["iradon_updates_per_second"] = size * size * n_views / per_slice
    out["iradon_seconds_per_slice"] = per_slice
    return out


def big_child(size, thickness, n_views):
    """Reconstruct a big volume into a memory-mapped MRC; prints seconds and peak RSS."""
    import mrcfile

    from tiltflow.io.mrc import SlabWriter, Stack

    with tempfile.TemporaryDirectory() as tmp:
        stack_path = Path(tmp) / "big.mrc"
        with mrcfile.new_mmap(stack_path, shape=(n_views, size, size), mrc_mode=2) as m:
            rng = np.random.default_rng(0)
            for j in range(n_views):
                m.data[j] = rng.normal(size=(size, size)).astype(np.float32)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the stack was written through a map
        xf, tilt = geometry(n_views, size)
        opts = reconstruct.ReconOptions(thickness_px=thickness, binning=1, slab_rows=32)
        shape = reconstruct.volume_shape((size, size), opts)
        t0 = time.perf_counter()
        with Stack(stack_path) as st, SlabWriter(Path(tmp) / "tomo.mrc", shape) as writer:
            _, stats = reconstruct.reconstruct(st, xf, tilt, opts, write_slab=writer.write)
        print(json.dumps({"seconds": time.perf_counter() - t0, "backprojection_seconds": stats["seconds"],
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "rss_after_writing_stack_mb": rss_before / 1024,
                          "updates_per_second": stats["voxels"] * stats["views"] / stats["seconds"],
                          "shape_zyx": list(shape), "views": n_views}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", action="store_true", help="also the 2048 x 2048 x 500 memory run")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=512, help="view size and tomogram width (throughput run)")
    ap.add_argument("--thickness", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "reconstruct.json"))
    args = ap.parse_args()
    if args.child:
        big_child(*args.child)
        return
    report = {"throughput": throughput(args.size, args.thickness, repeats=args.repeats)}
    print(json.dumps(report, indent=1))
    if args.big:
        res = subprocess.run([sys.executable, __file__, "--child", "2048", "500", "61"], capture_output=True,
                             text=True, check=True)
        report["big_2048x2048x500"] = json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps(report["big_2048x2048x500"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
