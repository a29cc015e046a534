"""Rule reconstruct_tomogram: weighted back-projection from the raw stack."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    steps.reconstruct_tomogram,
    snakemake.input.prepared,
    snakemake.input.xf,
    snakemake.input.tlt,
    dict(snakemake.params.options),
    snakemake.output.tomogram,
    snakemake.output.stats,
    snakemake.threads,
    snakemake.input.zfac[0] if snakemake.input.zfac else None,
    snakemake.input.surfaces[0] if snakemake.input.surfaces else None,
)
