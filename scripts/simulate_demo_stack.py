"""Rule simulate_demo_stack: the demo series' views rendered as an MRC stack."""
from tiltflow import steps

steps.run_logged(snakemake.log[0], steps.simulate_demo_stack, snakemake.wildcards.demo, snakemake.output.stack)
