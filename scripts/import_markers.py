"""Rule import_markers: validate one series' input files."""
from tiltflow import steps

steps.run_logged(snakemake.log[0], steps.import_markers, dict(snakemake.params.row), snakemake.output.prepared)
