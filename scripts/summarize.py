"""Rule summarize: results/summary.tsv, one row per series."""
from tiltflow import steps

steps.run_logged(snakemake.log[0], steps.summarize, list(snakemake.input.summaries), snakemake.output.tsv)
