"""The benchmark scripts keep running (speed is reported by them, never asserted here)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_solver_benchmark_runs_and_matches_scipy(tmp_path):
    out = tmp_path / "solver.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_solver.py"), "--repeats", "2",
                    "--scipy-repeats", "1", "--problems", "paper_107x30,large_121x200", "--skip-scipy-large",
                    "--scipy-analytic", "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    paper = report["paper_107x30"]
    # same accuracy as scipy's least_squares from the same start
    assert paper["tiltflow_rms"] <= paper["scipy_rms"] * 1.001
    assert paper["scipy_analytic_rms"] <= paper["scipy_rms"] * 1.001
    assert report["large_121x200"]["peak_memory_mb"] > 0 and "scipy_seconds" not in report["large_121x200"]
    assert report["large_121x200"]["outputs_peak_memory_mb"] > 0 and report["large_121x200"]["outputs_seconds"] > 0


@pytest.mark.slow
def test_coarse_benchmark_runs(tmp_path):
    out = tmp_path / "coarse.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_coarse.py"), "--size", "384", "--repeats", "1",
                    "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["shift_error_px"] <= 1.0
    assert abs(report["tilt_axis_estimate_deg"] - report["tilt_axis_true_deg"]) <= 1.0


@pytest.mark.slow
def test_reconstruct_benchmark_runs(tmp_path):
    out = tmp_path / "reconstruct.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_reconstruct.py"), "--size", "192",
                    "--thickness", "64", "--repeats", "1", "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())["throughput"]
    assert report["views"] == 61 and report["size"] == 192
    assert report["oversampling_16"]["updates_per_second"] > 0 and report["oversampling_32"]["updates_per_second"] > 0
