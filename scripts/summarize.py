"""Rule summarize: results/summary.tsv, one row per series."""
from tiltflow.workflow import summary
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], summary.summarize, list(snakemake.input.summaries), snakemake.output.tsv)
