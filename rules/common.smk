# Sheet loading, schema validation and input functions.
import re
import sys

from snakemake.utils import validate

# This checkout's package first on the path, before anything of tiltflow is imported, so that the
# DAG is built with the code the jobs run; jobs inherit PYTHONPATH (a conda env holds only dependencies).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from tiltflow.workflow.runtime import jobs_import_from, made_by_a_rule

jobs_import_from(Path(workflow.basedir) / "src")

from tiltflow.workflow.config import (
    coarse_params,
    distortion_start_stage,
    final_stage_name,
    images_params,
    recon_params,
    stage_params,
    write_params,
)
from tiltflow.workflow.resources import stack_resources
from tiltflow.workflow.sheet import read_sheet

validate(config, schema="../config/schemas/config.schema.yaml")

sheet = read_sheet(config["tiltseries"])
validate(sheet, schema="../config/schemas/tiltseries.schema.yaml")

SERIES = sheet["series"].tolist()
# Marker-free series (markers empty, stack given) are aligned from their images by align_images.
IMAGE_SERIES = [s for s in SERIES if not sheet.loc[s, "markers"]]
MARKER_SERIES = [s for s in SERIES if s not in IMAGE_SERIES]

#: Whether the images of series with markers and a stack refine the marker solution (in write_alignment).
REFINE_WITH_IMAGES = bool(config["projection_matching"]["with_markers"])


def names_pattern(names):
    """A wildcard pattern matching exactly ``names`` (none: a pattern that matches nothing)."""
    return "|".join(re.escape(s) for s in names) or "(?!x)x"


wildcard_constraints:
    series="|".join(re.escape(s) for s in SERIES),


def sheet_row(wildcards):
    """The sheet row of a series as a plain dict (a rerun trigger: editing the row reruns its import)."""
    row = sheet.loc[wildcards.series].to_dict()
    return {k: (None if v != v else v) for k, v in row.items()}


def existing(path):
    """``[path]`` when the file exists or the workflow makes it (the demo), else ``[]``.

    A missing file fails its own series' import (naming the row and column) instead of
    stopping the whole sheet before any job starts.
    """
    if not path:
        return []
    if Path(path).is_file() or made_by_a_rule(workflow, path):
        return [path]
    return []


def series_files(wildcards):
    """Input files of a series that exist: markers, tilts, and stack/prexg when given."""
    row = sheet.loc[wildcards.series]
    return {key: existing(row[key]) for key in ("markers", "tilts", "stack", "prexg") if existing(row[key])}


def coarse_inputs(wildcards):
    """The prepared series, and its stack when the sheet gives one (coarse alignment from images)."""
    files = {"prepared": f"results/{wildcards.series}/work/prepared.json"}
    stack = existing(sheet.loc[wildcards.series, "stack"])
    if stack:
        files["stack"] = stack
    return files


def coarse_stage_params(wildcards):
    """What the coarse stage reads: the reference view and, for a series with a stack, ``coarse``."""
    return coarse_params(config, bool(sheet.loc[wildcards.series, "stack"]))


def series_stack(wildcards):
    """The stack of a series (only series with one get a tomogram)."""
    return existing(sheet.loc[wildcards.series, "stack"])


def series_zfac(wildcards):
    """The .zfac of a marker alignment (its in-plane stretch enters the back-projection); none for a
    series aligned from its images alone."""
    s = wildcards.series
    return [f"results/{s}/{s}.zfac"] if s in MARKER_SERIES else []


def series_surfaces(wildcards):
    """The summary.json whose surface analysis places the tomogram, when reconstruct.flatten is on and
    the series has markers (not an input otherwise: a rewritten summary does not re-run the tomogram)."""
    s = wildcards.series
    flatten = bool((config.get("reconstruct") or {}).get("flatten"))
    return [f"results/{s}/summary.json"] if flatten and s in MARKER_SERIES else []


def provenance_inputs(wildcards):
    """The series' final results (their times bound the run) and its input files (hashed)."""
    s = wildcards.series
    files = {"summary": f"results/{s}/summary.json", "xf": f"results/{s}/{s}.xf"}
    if sheet.loc[s, "stack"]:
        files["tomogram"] = f"results/{s}/tomogram.json"
    return files


def has_stack(series):
    """Whether the sheet gives the series a stack."""
    return bool(sheet.loc[series, "stack"])


def job_group(step):
    """The cluster job group of a per-series step, as a function of the series.

    On a cluster, the jobs of one group and one series are one submission
    (local runs ignore groups).  ``align``: a series' light jobs (import,
    coarse from markers, the L-M stages, the outputs, the plots, the
    provenance).  A series with a stack instead has ``images`` (its import
    and the coarse alignment from the stack) and ``tomogram`` (the
    reconstruction and the provenance, which waits for it), each with the
    heavy job's threads, memory and runtime.
    """
    heavy = {"import": "images", "coarse": "images", "provenance": "tomogram", "reconstruct": "tomogram",
             "plot_tomogram": "tomogram"}

    def group(wildcards):
        if has_stack(wildcards.series) and step in heavy:
            return heavy[step]
        return "align"

    return group


def stack_resource(kind, name):
    """A resource (``threads``, ``mem_mb`` or ``runtime``) of a coarse or reconstruction job,
    computed from its stack's MRC header when the job is ready (light values without a stack)."""
    recon = config["reconstruct"]

    def get(wildcards, input):
        stack = getattr(input, "stack", None)
        if stack is not None and not isinstance(stack, str):  # a one-file list
            stack = next(iter(stack), None)
        res = stack_resources(kind, stack, recon["binning"], recon["thickness"])
        return getattr(res, name)

    return get


def refine_stack(wildcards):
    """The stack write_alignment reads when the images refine the markers (else nothing)."""
    return series_stack(wildcards) if REFINE_WITH_IMAGES else []


def write_alignment_params(wildcards):
    """write_alignment's params: the model (leave-out, standard errors) and, with a stack, the refinement."""
    return write_params(config, has_stack(wildcards.series))


def write_alignment_group(wildcards):
    """A series refined from its images writes its alignment in its images group (heavy), else align."""
    return "images" if REFINE_WITH_IMAGES and has_stack(wildcards.series) else "align"


def final_stage(wildcards):
    """State file of the last alignment stage (polish, or tilt when polish is off)."""
    return f"results/{wildcards.series}/stages/{final_stage_name(config)}.json"


def distortion_start(stage):
    """Input function: ``start``, the state the leave-out test of distortion starts from, for the
    run's last stage when distortion is asked for (nothing otherwise)."""

    def inputs(wildcards):
        start = distortion_start_stage(stage, config)
        return {"start": f"results/{wildcards.series}/stages/{start}.json"} if start else {}

    return inputs


def plot_output(name):
    """A per-series plot registered for the report, captioned from report/{name}.rst."""
    return report(
        f"results/{{series}}/plots/{name}.png",
        caption=f"../report/{name}.rst",
        category="Series",
        subcategory="{series}",
        labels={"series": "{series}", "plot": name.replace("_", " ")},
    )


def all_outputs():
    common = ["{series}.xf", "{series}.tlt", "summary.json", "coarse.xf", "views.tsv"]
    markers = ["{series}.xyz", "{series}.resid", "{series}.zfac", "{series}.xtilt", "taSolution.log", "fiducials.tsv", "markers.tsv",
               "large_residuals.tsv", "plots/residual_vs_tilt.png"]
    files = [f"results/{s}/{f.format(series=s)}" for s in SERIES for f in common]
    files += [f"results/{s}/{f.format(series=s)}" for s in MARKER_SERIES for f in markers]
    files += [f"results/{s}/plots/projection_matching.png" for s in IMAGE_SERIES]
    stacks = [s for s in SERIES if sheet.loc[s, "stack"]]
    files += [f"results/{s}/{f}" for s in stacks for f in ("tomogram.mrc", "tomogram.json", "plots/tomogram.png")]
    files += [f"results/{s}/provenance.json" for s in SERIES]
    return files + ["results/summary.tsv", "results/summary.png"]
