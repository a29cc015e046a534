"""The SLURM profile on a real SLURM (started by .ci/slurm-up): grouped submissions, resources from
the stack header, outputs identical to a local run.

Runs with ``pytest -m slurm``; skips when no SLURM answers or the ``[slurm]`` extra is missing,
unless ``TILTFLOW_REQUIRE_SLURM=1`` (CI), where that is a failure.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from test_reproducible import science_outputs
from test_workflow import SNAKEFILE, marker_and_stack_series, small_series, snakemake

pytestmark = pytest.mark.slurm

PROFILE = REPO / "profiles" / "slurm"


def slurm_or_skip():
    """Skip (or fail, when CI requires SLURM) unless the plugin is installed and sinfo answers."""
    problem = None
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        problem = 'snakemake-executor-plugin-slurm is not installed (pip install ".[slurm]")'
    elif shutil.which("sinfo") is None:
        problem = "no sinfo on PATH (.ci/slurm-up starts a single-node SLURM)"
    else:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if res.returncode != 0 or "idle" not in res.stdout.split():
            problem = f"no idle SLURM node: sinfo said {res.stdout.strip()!r} {res.stderr.strip()!r}"
    if problem:
        if os.environ.get("TILTFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


def slurm_job_ids():
    """Ids of every job slurmctld remembers (MinJobAge keeps finished ones)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return {int(x) for x in out.stdout.split()}


def slurm_jobs(ids):
    """Job id -> (CPUs, memory, time limit) as SLURM granted them."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%C|%m|%l|%T"], capture_output=True, text=True,
                         check=True)
    jobs = {}
    for line in out.stdout.split():
        job, cpus, mem, limit, state = line.split("|")
        if int(job) in ids:
            jobs[int(job)] = (int(cpus), mem, limit, state)
    return jobs


def make_project(work):
    """Three marker-only series (m, m2, m3) and one with a stack (st)."""
    marker_and_stack_series(work, 31, 7)
    small_series(work / "m2", 32)
    small_series(work / "m3", 33)
    with open(work / "sheet.tsv", "a") as f:
        f.write("m2\tm2/m.csv\tm2/t.rawtlt\t-12.0\t\t800\t700\n")
        f.write("m3\tm3/m.csv\tm3/t.rawtlt\t-13.0\t\t800\t700\n")
    (work / "c.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv", "reconstruct": {"thickness": 40}}))


def test_slurm_profile_groups_jobs_and_matches_a_local_run(tmp_path):
    slurm_or_skip()
    local, cluster, elsewhere = tmp_path / "local", tmp_path / "cluster", tmp_path / "elsewhere"
    for work in (local, cluster, elsewhere):
        work.mkdir()
    make_project(local)
    make_project(cluster)
    snakemake(local, "--configfile", "c.yaml")

    before = slurm_job_ids()
    # from another working directory, with the profile given by its path; the overrides are this
    # test cluster's (no accounting: squeue; quick status checks)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(cluster),
           "--configfile", str(cluster / "c.yaml"), "--profile", str(PROFILE),
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "2"]
    res = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"SLURM run failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    submitted = sorted(slurm_job_ids() - before)
    jobs = slurm_jobs(set(submitted))

    # one submission per marker-only series (its job group), three for the series with a stack
    # (import + coarse from images, the alignment group, reconstruction + provenance)
    n_series, n_stacks = 4, 1
    assert len(submitted) == (n_series - n_stacks) + 3 * n_stacks, (submitted, res.stderr[-4000:])
    assert len(submitted) <= n_series + 3
    assert all(state == "COMPLETED" for *_, state in jobs.values()), jobs
    assert "Group job align" in res.stderr and "Group job images" in res.stderr and "Group job tomogram" in res.stderr
    assert not list(elsewhere.iterdir()), "the run wrote into the working directory instead of -d"

    a, b = science_outputs(local), science_outputs(cluster)
    assert sorted(a) == sorted(b)
    assert "results/st/tomogram.mrc" in a
    different = [k for k in a if a[k] != b[k]]
    assert not different, different
    for name in ("m", "m2", "m3", "st"):
        assert (cluster / "results" / name / "provenance.json").is_file()
