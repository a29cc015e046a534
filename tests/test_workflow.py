"""The Snakemake workflow end to end: demo, any working directory, keep-going,
reruns of only what changed, lint."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from tiltflow import io, simulate
from tiltflow.io.tables import read_table

SNAKEFILE = REPO / "Snakefile"


def snakemake(workdir, *args, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "2", *args]
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def jobs_planned(workdir, *args):
    """Rule -> job count of a dry run."""
    res = snakemake(workdir, "-n", *args)
    counts = {}
    for line in (res.stdout + res.stderr).splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def small_series(folder, seed, n_views=31, n_markers=10):
    spec = simulate.SimulationSpec(n_views=n_views, n_markers=n_markers, n_full_tracks=4, noise_px=0.3,
                                   width=800, height=700, seed=seed)
    sim = simulate.simulate(spec)
    folder.mkdir(parents=True, exist_ok=True)
    io.write_markers_csv(folder / "m.csv", sim.marker + 1, sim.view, sim.xy_px)
    (folder / "t.rawtlt").write_text("".join(f"{t:.3f}\n" for t in sim.nominal_tilt_deg))
    return sim


def marker_and_stack_series(work, marker_seed, stack_seed):
    """``sheet.tsv`` with a marker-only series ``m`` and a small series ``st`` that has a stack."""
    from tiltflow.io.mrc import write_stack

    small_series(work / "m", marker_seed)
    spec = simulate.SimulationSpec(n_views=31, n_markers=10, n_full_tracks=6, width=160, height=160,
                                   thickness_px=30.0, tilt_axis_deg=-6.0, shift_max_px=10.0, noise_px=0.3,
                                   seed=stack_seed)
    sim = simulate.simulate(spec)
    (work / "st").mkdir()
    io.write_markers_csv(work / "st/m.csv", sim.marker + 1, sim.view, sim.xy_px)
    io.write_tlt(work / "st/t.rawtlt", sim.nominal_tilt_deg, "8.2f")
    views = simulate.render_stack(sim, 30.0, simulate.RenderSpec(n_blobs=300, dose=300.0, seed=stack_seed))
    write_stack(work / "st/s.mrc", np.round(views).astype(np.int16), pixel_size_angstrom=8.0)
    (work / "sheet.tsv").write_text(
        "series\tmarkers\ttilts\ttilt_axis_angle\tstack\twidth\theight\n"
        "m\tm/m.csv\tm/t.rawtlt\t-12.0\t\t800\t700\n"
        "st\tst/m.csv\tst/t.rawtlt\t-5.0\tst/s.mrc\t\t\n"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two good series, run from a working directory outside the repository."""
    work = tmp_path_factory.mktemp("work")
    data = work / "data"
    small_series(data / "s1", 1)
    small_series(data / "s2", 2)
    (work / "sheet.tsv").write_text(
        "series\tmarkers\ttilts\ttilt_axis_angle\twidth\theight\texclude_views\n"
        "s1\tdata/s1/m.csv\tdata/s1/t.rawtlt\t-12.0\t800\t700\t\n"
        "s2\tdata/s2/m.csv\tdata/s2/t.rawtlt\t-13.0\t800\t700\t30\n"
    )
    (work / "my.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv"}))
    snakemake(work, "--configfile", "my.yaml")
    return work


def test_outputs_follow_the_contract(project):
    for name, n_views in (("s1", 31), ("s2", 31)):
        out = project / "results" / name
        for f in (f"{name}.xf", f"{name}.tlt", f"{name}.xyz", "fiducials.tsv", "summary.json", "coarse.xf"):
            assert (out / f).is_file(), f
        assert len(io.read_xf(out / f"{name}.xf")) == n_views
        assert len(io.read_tilts(out / f"{name}.tlt")) == n_views
        fid = pd.read_csv(out / "fiducials.tsv", sep="\t")
        assert list(fid.columns) == ["marker", "view", "tilt", "x", "y", "x_fit", "y_fit", "resid_x", "resid_y", "weight"]
        assert len(fid) == 10 * n_views and fid["x_fit"].notna().all()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_views"] == n_views and summary["n_markers"] == 10
        views = pd.read_csv(out / "views.tsv", sep="\t")
        assert len(views) == n_views and {"tilt", "rotation", "scale", "se_tilt", "leave_out_error"} <= set(views)
        markers = pd.read_csv(out / "markers.tsv", sep="\t")
        assert len(markers) == 10 and {"x", "y", "z", "n_obs", "surface"} <= set(markers)
        assert (out / "large_residuals.tsv").is_file() and "surfaces" in summary and "downweighted" in summary
        assert 0.2 < summary["mean_residual"] < 0.6 and summary["solve_seconds"] > 0
        assert summary["leave_out_error"] > summary["mean_residual"]
    s2 = json.loads((project / "results/s2/summary.json").read_text())
    assert s2["excluded_views"] == [30]
    fid2 = pd.read_csv(project / "results/s2/fiducials.tsv", sep="\t")
    last = fid2[fid2["view"] == 30]
    assert (last["weight"].dropna() == 0).all()  # excluded view: kept in the grid, not used
    table = pd.read_csv(project / "results/summary.tsv", sep="\t")
    assert table["series"].tolist() == ["s1", "s2"]
    for col in ("rms", "mean_residual", "leave_out_error", "solve_seconds"):
        assert col in table.columns


def test_nothing_to_redo_then_only_what_is_missing(project):
    assert jobs_planned(project, "--configfile", "my.yaml") == {}
    (project / "results/s1/summary.json").unlink()
    planned = jobs_planned(project, "--configfile", "my.yaml")
    assert planned == {"write_alignment": 1, "summarize": 1, "plot_alignment": 1, "plot_summary": 1,
                       "write_provenance": 1, "all": 1}
    snakemake(project, "--configfile", "my.yaml")


def test_changing_a_science_parameter_reruns_only_affected_rules(project):
    cfg = {"tiltseries": "sheet.tsv", "align": {"tilt": "fixed"}}
    (project / "other.yaml").write_text(yaml.safe_dump(cfg))
    planned = jobs_planned(project, "--configfile", "other.yaml")
    assert planned == {"align_tilt": 2, "align_polish": 2, "write_alignment": 2, "summarize": 1,
                       "plot_alignment": 2, "plot_summary": 1, "write_provenance": 2, "all": 1}


def test_one_bad_series_does_not_stop_the_others(tmp_path):
    small_series(tmp_path / "good", 3)
    bad = tmp_path / "bad"
    small_series(bad, 4)
    lines = (bad / "m.csv").read_text().splitlines()
    lines.insert(5, "3,99,100.0,100.0")  # view 99 does not exist
    (bad / "m.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "sheet.tsv").write_text(
        "series\tmarkers\ttilts\ttilt_axis_angle\twidth\theight\n"
        "bad\tbad/m.csv\tbad/t.rawtlt\t-12.5\t800\t700\n"
        "good\tgood/m.csv\tgood/t.rawtlt\t-12.5\t800\t700\n"
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv"}))
    res = snakemake(tmp_path, "--configfile", "c.yaml", "--keep-going", check=False)
    assert res.returncode != 0
    assert (tmp_path / "results/good/summary.json").is_file()
    assert not (tmp_path / "results/bad/summary.json").exists()
    log = (tmp_path / "logs/bad/import_markers.log").read_text()
    assert "bad/m.csv: line 6: view 99 is outside the tilt list" in log
    # what finished, what failed and where to look
    assert not (tmp_path / "results/summary.tsv").exists()
    partial = pd.read_csv(tmp_path / "results/summary.partial.tsv", sep="\t").set_index("series")
    assert partial.loc["good", "outcome"] == "done" and partial.loc["good", "rms"] > 0
    assert partial.loc["bad", "outcome"] == "failed"
    assert partial.loc["bad", "failed_log"] == "logs/bad/import_markers.log"
    assert "view 99 is outside the tilt list" in partial.loc["bad", "error"]
    # fixing the bad series: the run completes, the partial table goes
    lines = (bad / "m.csv").read_text().splitlines()
    (bad / "m.csv").write_text("\n".join(ln for ln in lines if ln != "3,99,100.0,100.0") + "\n")
    snakemake(tmp_path, "--configfile", "c.yaml")
    assert (tmp_path / "results/summary.tsv").is_file()
    assert not (tmp_path / "results/summary.partial.tsv").exists()


def test_building_the_dag_imports_no_numba_scipy_or_matplotlib(project):
    """``snakemake -n`` (every call builds the DAG) loads only the light config layer of the package."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('HEAVY', sorted(m for m in ('numba', 'scipy', 'matplotlib') "
            "if m in sys.modules), file=sys.stderr))\n"
            "from snakemake.cli import main\n"
            f"main(['-s', {str(SNAKEFILE)!r}, '--configfile', 'my.yaml', '-n', '--cores', '1'])\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True)
    heavy = [ln for ln in res.stderr.splitlines() if ln.startswith("HEAVY")]
    assert heavy == ["HEAVY []"], res.stderr[-3000:]


def test_bad_config_is_refused(project):
    (project / "bad.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv", "align": {"rotation": "often"}}))
    res = snakemake(project, "--configfile", "bad.yaml", "-n", check=False)
    assert res.returncode != 0 and "often" in res.stdout + res.stderr


def test_lint_is_clean(project):
    res = snakemake(project, "--configfile", "my.yaml", "--lint", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Lints for" not in res.stdout + res.stderr


@pytest.mark.slow
def test_demo_runs_from_the_default_config(tmp_path):
    """What the README's first command does, in a scratch copy of the config."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "config").mkdir()
    (work / "config" / "tiltseries.tsv").write_text((REPO / "config" / "tiltseries.tsv").read_text())
    snakemake(work)
    table = pd.read_csv(work / "results/summary.tsv", sep="\t")
    assert sorted(table["series"]) == sorted([*simulate.DEMO_SERIES, "demo_nomarkers"])
    markers = table["series"] != "demo_nomarkers"  # aligned from its images: no marker residuals
    assert (table.loc[markers, "mean_residual"] < 1.0).all()
    assert table.loc[~markers, "mean_residual"].isna().all()


def test_report_builds_with_the_plots(project):
    for name in ("residual_vs_tilt", "residual_vectors", "trajectories", "tilt_change", "rotation_scale",
                 "markers_xz"):
        png = project / "results/s1/plots" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    snakemake(project, "--configfile", "my.yaml", "--report", "report.html")
    html = (project / "report.html").read_text(errors="replace")
    assert "residual vs tilt" in html and "s2" in html


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--window-size=1400,1000", "--virtual-time-budget=8000"]


@pytest.mark.slow
def test_report_opens_in_headless_chromium_without_console_errors(project, tmp_path):
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    report = project / "report.html"
    if not report.is_file():
        snakemake(project, "--configfile", "my.yaml", "--report", "report.html")
    shot = tmp_path / "report.png"  # nothing is written into the checkout
    res = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    errors = [ln for ln in res.stderr.splitlines()
              if ("CONSOLE" in ln and ":ERROR:" in ln) or "Uncaught" in ln]
    assert not errors, "\n".join(errors)


def test_bad_rows_fail_alone_and_bad_points_are_reported(tmp_path):
    """A mis-clicked contour, a tilt file of zeros, a missing prexg and excluded view ranges in one sheet."""
    sim = small_series(tmp_path / "good", 21)
    small_series(tmp_path / "ranges", 22)
    small_series(tmp_path / "contour", 23, n_views=41, n_markers=16)
    # one extra 3-point contour clicked at random places in views 0-2 (the 16 markers x 41 views)
    rng = np.random.default_rng(0)
    with open(tmp_path / "contour/m.csv", "a", encoding="utf-8") as f:
        for view, (x, y) in zip((0, 1, 2), rng.uniform(100, 600, (3, 2))):
            f.write(f"99,{view},{x:.2f},{y:.2f}\n")
    small_series(tmp_path / "zeros", 24)
    (tmp_path / "zeros/t.rawtlt").write_text("0.0\n" * len(sim.nominal_tilt_deg))
    small_series(tmp_path / "noprexg", 25)
    (tmp_path / "sheet.tsv").write_text(
        "series\tmarkers\ttilts\ttilt_axis_angle\twidth\theight\tprexg\texclude_views\n"
        "good\tgood/m.csv\tgood/t.rawtlt\t-12.5\t800\t700\t\t\n"
        "ranges\tranges/m.csv\tranges/t.rawtlt\t-12.5\t800\t700\t\t0-2, 29-30\n"
        "contour\tcontour/m.csv\tcontour/t.rawtlt\t-12.5\t800\t700\t\t\n"
        "zeros\tzeros/m.csv\tzeros/t.rawtlt\t-12.5\t800\t700\t\t\n"
        "noprexg\tnoprexg/m.csv\tnoprexg/t.rawtlt\t-12.5\t800\t700\tnoprexg/missing.prexg\t\n"
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv"}))
    res = snakemake(tmp_path, "--configfile", "c.yaml", check=False)  # the default profile keeps going
    assert res.returncode != 0
    for name in ("good", "ranges", "contour"):
        assert (tmp_path / f"results/{name}/summary.json").is_file(), name
    # excluded view ranges
    assert json.loads((tmp_path / "results/ranges/summary.json").read_text())["excluded_views"] == [0, 1, 2, 29, 30]
    # the mis-clicked contour is rejected and listed; the good points of views 0-2 keep their weight
    summary = json.loads((tmp_path / "results/contour/summary.json").read_text())
    assert [m["marker"] for m in summary["rejected_markers"]] == ["99"]
    large = pd.read_csv(tmp_path / "results/contour/large_residuals.tsv", sep="\t", dtype={"marker": str})
    assert large["marker"].head(3).tolist() == ["99"] * 3 and (large["weight"].head(3) == 0).all()
    assert large["resid"].is_monotonic_decreasing
    fid = pd.read_csv(tmp_path / "results/contour/fiducials.tsv", sep="\t", dtype={"marker": str})
    good_early = fid[(fid["marker"] != "99") & fid["view"].isin([0, 1, 2]) & fid["x"].notna()]
    assert (good_early["weight"] > 0.5).all()
    assert "marker 99: all 3 observations rejected" in (tmp_path / "logs/contour/write_alignment.log").read_text()
    # a tilt file of zeros is refused at import, naming the file
    log = (tmp_path / "logs/zeros/import_markers.log").read_text()
    assert "zeros/t.rawtlt: 31 tilt angles with 1 distinct value(s)" in log
    # a missing file fails its own row, naming the series and the column
    log = (tmp_path / "logs/noprexg/import_markers.log").read_text()
    assert "sheet row noprexg: file(s) not found: prexg noprexg/missing.prexg" in log
    partial = pd.read_csv(tmp_path / "results/summary.partial.tsv", sep="\t").set_index("series")
    assert partial["outcome"].to_dict() == {"good": "done", "ranges": "done", "contour": "done",
                                            "zeros": "failed", "noprexg": "failed"}


def test_a_tilt_offset_mode_is_refused_with_the_reason(project):
    (project / "offset.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv", "align": {"tilt": "offset"}}))
    res = snakemake(project, "--configfile", "offset.yaml", "-n", check=False)
    assert res.returncode != 0 and "'offset' is not one of ['per_view', 'grouped', 'fixed']" in res.stdout + res.stderr


def test_provenance_records_what_made_the_results(project):
    import hashlib

    doc = json.loads((project / "results/s1/provenance.json").read_text())
    assert doc["series"] == "s1" and doc["versions"]["numpy"] and doc["versions"]["snakemake"]
    assert doc["tiltflow"]["version"] and doc["host"]["name"]
    assert doc["config"]["align"]["rotation"] == "per_view" and doc["config"]["tiltseries"] == "sheet.tsv"
    data = (project / "data/s1/m.csv").read_bytes()
    assert doc["inputs"]["markers"] == {"path": "data/s1/m.csv", "bytes": len(data),
                                        "sha256": hashlib.sha256(data).hexdigest()}
    assert set(doc["inputs"]) == {"markers", "tilts"}
    assert doc["started"] < doc["finished"]
    if (REPO / ".git").exists():
        assert len(doc["tiltflow"]["git_commit"]) == 40


def test_an_alignment_stage_job_loads_neither_numba_scipy_pandas_nor_matplotlib(project, tmp_path):
    """Lean jobs: a stage of a small series runs on numpy alone (numba only from 5,000 observations)."""
    code = (
        "import sys\n"
        "from tiltflow.workflow import steps\n"
        f"steps.align_stage('main', {str(project / 'results/s1/work/prepared.json')!r}, "
        f"{str(project / 'results/s1/stages/initial.json')!r}, {{}}, {str(tmp_path / 'main.json')!r})\n"
        "print(sorted(m for m in ('numba', 'scipy', 'pandas', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert json.loads((tmp_path / "main.json").read_text())["stages"][-1]["name"] == "main"


def test_a_marker_free_series_is_aligned_from_its_images(tmp_path):
    """markers empty + stack: coarse + projection matching, the IMOD files, the quality metrics, the pictures."""
    marker_and_stack_series(tmp_path, 5, 6)
    spec = simulate.SimulationSpec(n_views=31, n_markers=10, n_full_tracks=6, width=160, height=160,
                                   thickness_px=30.0, tilt_axis_deg=-6.0, shift_max_px=10.0, noise_px=0.3, seed=6)
    sim = simulate.simulate(spec)  # the truth behind st/s.mrc
    (tmp_path / "sheet.tsv").write_text(
        "series\tmarkers\ttilts\ttilt_axis_angle\tstack\n"
        "nm\t\tst/t.rawtlt\t-5.0\tst/s.mrc\n"
    )
    snakemake(tmp_path, "--config", "tiltseries=sheet.tsv")
    out = tmp_path / "results/nm"
    for name in ("nm.xf", "nm.tlt", "coarse.xf", "views.tsv", "summary.json", "tomogram.mrc", "provenance.json",
                 "plots/projection_matching.png", "plots/tomogram.png"):
        assert (out / name).is_file(), name
    assert not (out / "fiducials.tsv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alignment"] == "images" and summary["n_markers"] == 0
    pm = summary["projection_matching"]
    assert [lv["binning"] for lv in pm["levels"]] == [4, 2, 1] and pm["converged"]
    views = read_table(out / "views.tsv", text_columns=("status",))
    assert np.all(views["ncc_after"] > 0.5)
    est = np.column_stack([views["dx"], views["dy"]])
    err = simulate.shift_error_px(est, sim.views[:, 3:], sim.views[:, 0], np.rad2deg(sim.views[:, 1]).mean())
    coarse = np.column_stack([views["coarse_dx"], views["coarse_dy"]])
    err_coarse = simulate.shift_error_px(coarse, sim.views[:, 3:], sim.views[:, 0], np.rad2deg(sim.views[:, 1]).mean())
    assert err <= 0.5, f"{err:.3f} px RMS (coarse {err_coarse:.3f})"
    # the .xf alone reproduces the alignment: raw position of the centre of view j -> aligned centre
    xf = io.read_xf(out / "nm.xf")
    a = xf[:, :4].reshape(-1, 2, 2)
    back = np.einsum("nij,nj->ni", a, est) + xf[:, 4:]
    np.testing.assert_allclose(back, 0.0, atol=1e-3)


def test_a_row_without_markers_or_stack_is_refused_naming_it(tmp_path):
    small_series(tmp_path / "m", 1)
    (tmp_path / "sheet.tsv").write_text(
        "series\tmarkers\ttilts\ttilt_axis_angle\twidth\theight\n"
        "ok\tm/m.csv\tm/t.rawtlt\t-12.0\t800\t700\n"
        "empty\t\tm/t.rawtlt\t-12.0\t800\t700\n"
    )
    res = snakemake(tmp_path, "--config", "tiltseries=sheet.tsv", "-n", check=False)
    assert res.returncode != 0
    assert "line 3 (empty): markers and stack are both empty" in res.stdout + res.stderr
