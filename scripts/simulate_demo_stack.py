"""Rule simulate_demo_stack: the demo series' views rendered as an MRC stack."""
from tiltflow.workflow import demo
from tiltflow.workflow.runtime import run_logged

run_logged(snakemake.log[0], demo.simulate_demo_stack, snakemake.wildcards.demo, snakemake.output.stack)
