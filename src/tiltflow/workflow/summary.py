"""The cross-series tables: ``results/summary.tsv`` (rule ``summarize``) and, after a run
with failures, ``results/summary.partial.tsv`` (Snakemake's ``onerror``)."""

from __future__ import annotations

from pathlib import Path

from ..io.tables import read_json, write_table

SUMMARY_COLUMNS = [
    "series", "n_views", "n_markers", "n_observations", "rms", "mean_residual", "leave_out_error",
    "solve_seconds", "tilt_axis_deg_mean", "tilt_offset_deg_mean", "reference_view", "status",
]


def summarize(summary_paths, out_tsv):
    """Rule ``summarize``: ``results/summary.tsv``, one row per series."""
    rows = []
    for p in summary_paths:
        doc = read_json(p)
        rows.append({k: doc.get(k) for k in SUMMARY_COLUMNS})
    write_table(out_tsv, _columns(rows, SUMMARY_COLUMNS), float_format="%.5g")


PARTIAL_COLUMNS = [*SUMMARY_COLUMNS, "outcome", "failed_log", "error"]


def partial_summary(series_names, out_tsv, results_dir="results", logs_dir="logs"):
    """``results/summary.partial.tsv`` after a run with failures (Snakemake ``onerror``).

    One row per series: the summary columns of those that finished
    (``outcome`` "done"), and for the others ``outcome`` "failed" with the
    log of the failing rule and its last line (the error), or "not run"
    when no log reports an error (a dependency failed first or the run was
    stopped).  Reads only what is on disk; never raises on a missing or
    unreadable file, so it cannot hide the original error.
    """
    rows = []
    for name in series_names:
        summary = Path(results_dir) / name / "summary.json"
        row = dict.fromkeys(PARTIAL_COLUMNS)
        row["series"] = name
        try:
            doc = read_json(summary)
            row.update({k: doc.get(k) for k in SUMMARY_COLUMNS})
            row["outcome"] = "done"
        except (OSError, ValueError):
            row["outcome"] = "not run"
        failed = _failed_logs(Path(logs_dir) / name)
        if failed:
            log_path, message = failed[-1]
            row.update({"outcome": "failed", "failed_log": str(log_path), "error": message})
        rows.append(row)
    write_table(out_tsv, _columns(rows, PARTIAL_COLUMNS), float_format="%.5g")
    return rows


def _columns(rows, names):
    """Rows (dicts) as columns, in the order of ``names``."""
    return {name: [row.get(name) for row in rows] for name in names}


def _failed_logs(folder):
    """``(path, last line)`` of the rule logs in ``folder`` that record a failure, oldest first."""
    found = []
    for path in sorted(Path(folder).glob("*.log"), key=lambda p: p.stat().st_mtime):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if " ERROR " in text or "Traceback" in text:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            found.append((path, lines[-1] if lines else ""))
    return found
