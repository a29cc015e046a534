"""Rule plot_images: the projection-matching plot of a marker-free series."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], steps.plot_images, snakemake.input.views, snakemake.input.summary,
           snakemake.output.png)
