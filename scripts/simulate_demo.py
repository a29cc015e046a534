"""Rule simulate_demo: deterministic demo series with known truth."""
from tiltflow.workflow import demo
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], demo.simulate_demo, snakemake.wildcards.demo, dict(snakemake.output.items()))
