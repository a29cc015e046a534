"""Wall time per marker-only series of a batch run (the per-job overhead of the workflow).

Writes N simulated series (16 markers x 41 views, CSV), runs the workflow on
them with ``--cores 2`` in a scratch folder, and reports the wall time per
series and where it goes: the solve (``summary.json`` -> ``solve_seconds``),
the Python start-up plus imports of one job (a fresh interpreter importing
what a stage job imports, measured apart), and the rest (Snakemake's
scheduling, job start, I/O).

    python benchmarks/bench_batch.py --series 16 [--out benchmarks/out/batch.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tiltflow import io, simulate  # noqa: E402


def write_series(folder, n):
    rows = ["series\tmarkers\ttilts\ttilt_axis_angle\twidth\theight"]
    for k in range(n):
        spec = simulate.SimulationSpec(n_views=41, n_markers=16, n_full_tracks=8, noise_px=0.4, seed=100 + k)
        sim = simulate.simulate(spec)
        d = folder / f"s{k:03d}"
        d.mkdir(parents=True)
        io.write_markers_csv(d / "m.csv", sim.marker + 1, sim.view, sim.xy_px)
        io.write_tlt(d / "t.rawtlt", sim.nominal_tilt_deg, "8.2f")
        rows.append(f"s{k:03d}\ts{k:03d}/m.csv\ts{k:03d}/t.rawtlt\t{spec.tilt_axis_deg}\t{spec.width}\t{spec.height}")
    (folder / "sheet.tsv").write_text("\n".join(rows) + "\n")
    (folder / "c.yaml").write_text("tiltseries: sheet.tsv\n")


def job_startup_seconds(repeats=5):
    """A fresh interpreter importing what a stage job imports (median of ``repeats``)."""
    code = "import tiltflow.workflow.steps, tiltflow.align, tiltflow.io.state"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO / "src")})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "batch.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_series(work, args.series)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "c.yaml",
                        "--cores", str(args.cores), "--quiet"], cwd=work, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        solve = [json.loads((work / f"results/s{k:03d}/summary.json").read_text())["solve_seconds"]
                 for k in range(args.series)]
        jobs = sum(1 for _ in (work / "logs").rglob("*.log"))
    startup = job_startup_seconds()
    report = {
        "series": args.series, "cores": args.cores, "jobs": jobs, "wall_seconds": wall,
        "wall_per_series": wall / args.series, "solve_seconds_per_series": statistics.mean(solve),
        "job_startup_and_imports_seconds": startup,
        "startup_and_imports_per_series_cpu_seconds": startup * jobs / args.series,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        print(f"{k:45s} {v:.3f}" if isinstance(v, float) else f"{k:45s} {v}")


if __name__ == "__main__":
    main()
