# tiltflow: fiducial alignment of electron-tomography tilt series.
# Run from any working directory:
#   snakemake -s <repo>/Snakefile --configfile my.yaml --cores N
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/align.smk"
include: "rules/reconstruct.smk"
include: "rules/summary.smk"
include: "rules/plots.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
