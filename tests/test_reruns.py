"""For every config key: changing it re-runs exactly the rules that read it (and what depends on
their outputs), nothing else -- read from Snakemake's dry-run job list."""

import shutil

import pytest
import yaml
from test_config import LEAVES
from test_workflow import jobs_planned, marker_and_stack_series, snakemake


#: A value other than the default for every config key (a new key needs an entry here).
CHANGED = {
    "align.rotation": "single",
    "align.scale": "fixed",
    "align.tilt": "fixed",
    "align.reference_view": 15,
    "align.polish": False,
    "align.max_iterations": 150,
    "align.ftol": 1.0e-9,
    "align.distortion": "grouped",
    "align.rotation_group": 6,
    "align.tilt_group": 4,
    "align.scale_group": 5,
    "align.stretch_group": 8,
    "align.skew_group": 9,
    "align.distortion_min_ratio": 3.0,
    "align.distortion_test": False,
    "align.distortion_significance": 3.0,
    "coarse.binning": 2,
    "coarse.taper_fraction": 0.15,
    "coarse.filter_sigma1": 0.02,
    "coarse.filter_radius2": 0.1,
    "coarse.filter_sigma2": 0.04,
    "coarse.weak_peak_ratio": 0.4,
    "coarse.axis_search": False,
    "coarse.axis_search_range_deg": 6.0,
    "reconstruct.thickness": 100,
    "reconstruct.binning": 4,
    "reconstruct.z_offset": 4.0,
    "reconstruct.flatten": True,
    "reconstruct.lowpass_cutoff": 0.3,
    "reconstruct.lowpass_sigma": 0.05,
    "reconstruct.sirt_iterations": 5,
    "reconstruct.slab_rows": 16,
    "reconstruct.oversampling": 8,
    "reconstruct.dtype": "float16",
    "projection_matching.finest_size": 128,
    "projection_matching.thickness": 40.0,
    "projection_matching.band_height": 2.0,
    "projection_matching.reconstruction": "sirt",
    "projection_matching.max_iterations": 5,
    "projection_matching.tolerance": 0.1,
    "projection_matching.with_markers": True,
    "robust": False,
    "tiltseries": "copy_of_sheet.tsv",
}

STAGES = ("align_initial", "align_main", "align_tilt", "align_polish")
#: Which rules read each key (besides write_provenance, which records them all), written out by hand ("st" is the
#: series with a stack, "m" has markers only, "nm" is marker-free: st's stack without its markers).
READERS = {
    "align.rotation": {r: ("m", "st") for r in (*STAGES, "write_alignment")},
    "align.scale": {r: ("m", "st") for r in ("align_main", "align_tilt", "align_polish", "write_alignment")},
    "align.tilt": {r: ("m", "st") for r in ("align_tilt", "align_polish", "write_alignment")},
    "align.rotation_group": {r: ("m", "st") for r in (*STAGES, "write_alignment")},
    "align.scale_group": {r: ("m", "st") for r in ("align_main", "align_tilt", "align_polish", "write_alignment")},
    **{k: {r: ("m", "st") for r in ("align_tilt", "align_polish", "write_alignment")}
       for k in ("align.tilt_group", "align.distortion", "align.stretch_group", "align.skew_group",
                 "align.distortion_min_ratio")},
    "align.reference_view": {"align_coarse": ("m", "st")},
    # read by the last stage only when distortion is asked for (default off)
    "align.distortion_test": {},
    "align.distortion_significance": {},
    "align.polish": {"write_alignment": ("m", "st")},  # reads the tilt stage instead; align_polish is not run
    "align.max_iterations": {r: ("m", "st") for r in STAGES},
    "align.ftol": {r: ("m", "st") for r in STAGES},
    "robust": {r: ("m", "st") for r in ("align_main", "align_tilt", "align_polish")},
    **{k: {"align_coarse": ("st",), "align_images": ("nm",)} for k in CHANGED if k.startswith("coarse.")},
    **{k: {"align_images": ("nm",)} for k in CHANGED if k.startswith("projection_matching.")},
    # the series with markers and a stack is refined from its images in write_alignment
    "projection_matching.with_markers": {"write_alignment": ("st",)},
    **{k: {"reconstruct_tomogram": ("st", "nm")} for k in CHANGED if k.startswith("reconstruct.")},
    "tiltseries": {},
}

#: What each rule's outputs feed, per series (summarize and plot_summary are one job for all).
FEEDS = {
    "align_coarse": ("align_initial",),
    "align_initial": ("align_main",),
    "align_main": ("align_tilt",),
    "align_tilt": ("align_polish", "write_alignment"),
    "align_polish": ("write_alignment",),
    "write_alignment": ("plot_alignment", "reconstruct_tomogram", "summarize", "write_provenance"),
    "align_images": ("plot_images", "reconstruct_tomogram", "summarize", "write_provenance"),
    "reconstruct_tomogram": ("write_provenance", "plot_tomogram"),
    "summarize": ("plot_summary",),
}


def expected_jobs(key):
    jobs = set()
    todo = [(rule, s) for rule, series in READERS[key].items() for s in series]
    todo += [("write_provenance", s) for s in ("m", "st", "nm")]  # records the whole config
    while todo:
        rule, s = todo.pop()
        if rule == "reconstruct_tomogram" and s not in ("st", "nm"):
            continue
        if key == "align.polish" and rule == "align_polish":
            continue
        if rule in ("summarize", "plot_summary"):
            s = "all"
        if (rule, s) in jobs:
            continue
        jobs.add((rule, s))
        todo += [(nxt, s) for nxt in FEEDS.get(rule, ())]
    counts = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    if counts:
        counts["all"] = 1
    return counts


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A marker-only series, a small series with a stack and the same stack without markers, run to completion."""
    work = tmp_path_factory.mktemp("reruns")
    marker_and_stack_series(work, 5, 6)
    with open(work / "sheet.tsv", "a") as sheet:
        sheet.write("nm\t\tst/t.rawtlt\t-5.0\tst/s.mrc\t\t\n")
    shutil.copy(work / "sheet.tsv", work / "copy_of_sheet.tsv")
    (work / "base.yaml").write_text(yaml.safe_dump({"tiltseries": "sheet.tsv"}))
    snakemake(work, "--configfile", "base.yaml")
    assert jobs_planned(work, "--configfile", "base.yaml") == {}
    return work


def test_every_key_is_covered():
    assert set(CHANGED) == set(LEAVES)
    assert set(CHANGED) == set(READERS)


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_changing_a_key_reruns_exactly_its_readers(project, key):
    config = {"tiltseries": "sheet.tsv"}
    section, _, name = key.rpartition(".")
    if section:
        config[section] = {name: CHANGED[key]}
    else:
        config[key] = CHANGED[key]
    path = project / f"changed_{key}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert jobs_planned(project, "--configfile", path.name) == expected_jobs(key)
