"""Wall time per marker-only series of a batch run (the per-job overhead of the workflow).

Writes N simulated series (16 markers x 41 views, CSV), runs the workflow on
them with ``--cores 2`` in a scratch folder, and reports the wall time per
series and where it goes: the CPU time of the Snakemake process itself
(scheduling, file checks, metadata) and of its jobs, each rule's mean job
time (from Snakemake's metadata), the Python start-up plus imports of one
alignment-stage job (Snakemake's script preamble and what the stage imports,
measured apart in a fresh interpreter), and the solve itself
(``summary.json`` -> ``solve_seconds``).

    python benchmarks/bench_batch.py --series 16 [--out benchmarks/out/batch.json]
"""

from __future__ import annotations

import argparse
import base64
import collections
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


#: Runs Snakemake in this interpreter and prints its own and its jobs' CPU seconds at exit.
SNAKEMAKE_WITH_RUSAGE = """
import atexit, json, resource, sys
def report():
    me, jobs = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"snakemake_cpu_seconds": me.ru_utime + me.ru_stime,
                      "jobs_cpu_seconds": jobs.ru_utime + jobs.ru_stime}), file=sys.stderr)
atexit.register(report)
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""

#: What an alignment-stage job imports: Snakemake's script preamble, then the step.
STAGE_JOB_IMPORTS = ("from snakemake.logging import logger; from snakemake.iocontainers import Snakemake; "
                     "import tiltflow.workflow.steps, tiltflow.workflow.runtime, tiltflow.align")


def job_startup_seconds(repeats=5):
    """A fresh interpreter importing what a stage job imports (median of ``repeats``)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", STAGE_JOB_IMPORTS], check=True,
                       env={"PYTHONPATH": str(REPO / "src"), "OPENBLAS_NUM_THREADS": "1"})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def job_seconds_by_rule(work):
    """Mean wall time of one job of each rule, from Snakemake's metadata (start and end of each output)."""
    jobs = collections.defaultdict(dict)
    for f in (work / ".snakemake" / "metadata").iterdir():
        meta = json.loads(f.read_text())
        output = base64.b64decode(f.name.replace("@", "/")).decode()
        series = output.split("/")[1] if output.startswith("results/") else ""
        jobs[meta["rule"]][(series, meta["starttime"])] = meta["endtime"] - meta["starttime"]
    return {rule: statistics.mean(t.values()) for rule, t in sorted(jobs.items())}


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
        run = subprocess.run([sys.executable, "-c", SNAKEMAKE_WITH_RUSAGE, "-s", str(REPO / "Snakefile"),
                              "--configfile", "c.yaml", "--cores", str(args.cores), "--quiet"],
                             cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        cpu = json.loads(run.stderr.strip().splitlines()[-1])
        solve = [json.loads((work / f"results/s{k:03d}/summary.json").read_text())["solve_seconds"]
                 for k in range(args.series)]
        jobs = sum(1 for _ in (work / "logs").rglob("*.log"))
        by_rule = job_seconds_by_rule(work)
    startup = job_startup_seconds()
    n = args.series
    report = {
        "series": n, "cores": args.cores, "jobs": jobs, "wall_seconds": wall,
        "wall_per_series": wall / n,
        "snakemake_cpu_seconds_per_series": cpu["snakemake_cpu_seconds"] / n,
        "jobs_cpu_seconds_per_series": cpu["jobs_cpu_seconds"] / n,
        "stage_job_startup_and_imports_seconds": startup,
        "solve_seconds_per_series": statistics.mean(solve),
        "job_seconds_by_rule": by_rule,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        if isinstance(v, dict):
            for rule, t in v.items():
                print(f"  {rule:43s} {t:.3f}")
        else:
            print(f"{k:45s} {v:.3f}" if isinstance(v, float) else f"{k:45s} {v}")


if __name__ == "__main__":
    main()
