"""Rule align_images: a marker-free series aligned from its stack (coarse + projection matching)."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    steps.align_images,
    snakemake.input.prepared,
    dict(snakemake.params.options),
    snakemake.wildcards.series,
    dict(snakemake.output.items()),
    threads=snakemake.threads,
)
