"""Rule plot_alignment: diagnostic plots of one series."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    steps.plot_alignment,
    snakemake.input.fiducials,
    snakemake.input.views,
    snakemake.input.markers,
    snakemake.input.summary,
    dict(snakemake.output.items()),
)
