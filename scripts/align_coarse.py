"""Rule align_coarse: coarse shifts (images or markers) and the starting state."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    steps.align_coarse,
    snakemake.input.prepared,
    dict(snakemake.params.options),
    snakemake.output.state,
    snakemake.output.coarse_xf,
    threads=snakemake.threads,
)
