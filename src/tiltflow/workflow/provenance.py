"""``results/{series}/provenance.json``: what produced a series' results, to reproduce them.

tiltflow's version and git commit (when run from a checkout), the versions
of Python, Snakemake and the numerical packages, the config values the
series used, its sheet row, the sha256 of every input file, the host, and
when the series' jobs started and finished.  Standard library only.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

from ..io.tables import write_json

#: Distributions whose versions are recorded.
PACKAGES = ("tiltflow", "snakemake", "numpy", "scipy", "pandas", "numba", "llvmlite", "mrcfile", "matplotlib",
            "pyyaml")
#: The sheet columns that name input files.
FILE_COLUMNS = ("markers", "tilts", "stack", "prexg")


def sha256(path, chunk=1 << 22):
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(folder):
    """``(commit, dirty)`` of the git checkout holding ``folder``, or ``(None, None)`` outside one."""
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def versions():
    """Python and the recorded packages' versions (None where not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _first_timestamp(log_path):
    """The time on the first line of a rule log (``logging``'s asctime), ISO format, or None."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        return datetime.datetime.strptime(first[:23], "%Y-%m-%d %H:%M:%S,%f").isoformat()
    except (OSError, ValueError):
        return None


def series_provenance(row, config, workflow_dir, log_dir, outputs):
    """The provenance document of one series.

    Parameters
    ----------
    row : mapping
        The series' sheet row (paths as given).
    config : mapping
        The config values of the run (after defaults were filled).
    workflow_dir : str
        The folder of the Snakefile (for the git commit).
    log_dir : str
        ``logs/{series}``: the first timestamps of its rule logs give the start.
    outputs : list of str
        The series' results; their latest modification time gives the end.
    """
    commit, dirty = git_commit(workflow_dir)
    packages = versions()
    inputs = {}
    for column in FILE_COLUMNS:
        path = row.get(column)
        if path:
            inputs[column] = {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": sha256(path)}
    starts = [t for t in (_first_timestamp(p) for p in sorted(Path(log_dir).glob("*.log"))) if t]
    ends = [Path(p).stat().st_mtime for p in outputs if Path(p).exists()]
    return {
        "series": row.get("series"),
        "tiltflow": {"version": packages["tiltflow"], "git_commit": commit, "git_dirty": dirty,
                     "workflow_dir": str(workflow_dir)},
        "versions": packages,
        "config": dict(config),
        "sheet_row": dict(row),
        "inputs": inputs,
        "host": {"name": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "started": min(starts) if starts else None,
        "finished": datetime.datetime.fromtimestamp(max(ends)).isoformat() if ends else None,
    }


def write_provenance(row, config, workflow_dir, log_dir, outputs, out_json):
    """Rule ``write_provenance``: write :func:`series_provenance` as JSON."""
    write_json(out_json, series_provenance(row, config, workflow_dir, log_dir, outputs))
