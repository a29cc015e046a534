"""Rule simulate_demo: deterministic demo series with known truth."""
from tiltflow import steps

steps.run_logged(snakemake.log[0], steps.simulate_demo, snakemake.wildcards.demo, dict(snakemake.output.items()))
