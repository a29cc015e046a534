"""Rule plot_summary: the cross-series chart."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], steps.plot_summary, snakemake.input.tsv, snakemake.output.png)
