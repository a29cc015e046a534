"""Rule plot_tomogram: central XY and XZ sections of a tomogram."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], steps.plot_tomogram, snakemake.input.tomogram, snakemake.wildcards.series,
           snakemake.output.png)
