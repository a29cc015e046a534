"""Rule align_coarse: marker-based coarse shifts and starting 3D positions."""
from tiltflow import steps

steps.run_logged(
    snakemake.log[0],
    steps.align_coarse,
    snakemake.input.prepared,
    dict(snakemake.params.options),
    snakemake.output.state,
    snakemake.output.coarse_xf,
)
