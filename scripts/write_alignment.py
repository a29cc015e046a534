"""Rule write_alignment: IMOD .xf/.tlt/.xyz, fiducials.tsv and summary.json (with
projection_matching.with_markers, the shifts refined from the stack's images first)."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    steps.write_alignment,
    snakemake.input.prepared,
    snakemake.input.state,
    dict(snakemake.params.options),
    snakemake.wildcards.series,
    dict(snakemake.output.items()),
    snakemake.input.coarse,
    threads=snakemake.threads,
)
