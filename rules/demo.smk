# Deterministic demo data (simulated marker observations with known truth).
from tiltflow.simulate import DEMO_SERIES, DEMO_STACKS


localrules:
    simulate_demo,
    simulate_demo_stack,


rule simulate_demo:
    output:
        csv="demo/{demo}/markers.csv",
        txt="demo/{demo}/markers.txt",
        fid="demo/{demo}/markers.fid",
        tilts="demo/{demo}/tilts.rawtlt",
        truth="demo/{demo}/truth.json",
    wildcard_constraints:
        demo="|".join(DEMO_SERIES),
    log:
        "logs/demo/{demo}.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/simulate_demo.py"


rule simulate_demo_stack:
    output:
        stack="demo/{demo}/stack.mrc",
    wildcard_constraints:
        demo="|".join(DEMO_STACKS),
    log:
        "logs/demo/{demo}_stack.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/simulate_demo_stack.py"
