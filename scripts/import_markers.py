"""Rule import_markers: validate one series' input files."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], steps.import_markers, dict(snakemake.params.row), snakemake.output.prepared)
