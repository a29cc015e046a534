"""Rule plot_summary: the cross-series chart."""
from tiltflow import steps

steps.run_logged(snakemake.log[0], steps.plot_summary, snakemake.input.tsv, snakemake.output.png)
