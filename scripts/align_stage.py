"""Rules align_initial, align_main, align_tilt, align_polish: one L-M stage (the last one, with
distortion asked for, also runs the leave-out test of distortion from the ``start`` state)."""
from tiltflow.workflow import steps
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    steps.align_stage,
    snakemake.params.stage,
    snakemake.input.prepared,
    snakemake.input.state,
    dict(snakemake.params.options),
    snakemake.output.state,
    snakemake.threads,
    snakemake.input.get("start"),
)
