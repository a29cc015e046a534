"""Rule plot_alignment: diagnostic plots of one series."""
from tiltflow import steps

steps.run_logged(
    snakemake.log[0],
    steps.plot_alignment,
    snakemake.input.fiducials,
    snakemake.input.views,
    snakemake.input.markers,
    snakemake.input.summary,
    dict(snakemake.output.items()),
)
