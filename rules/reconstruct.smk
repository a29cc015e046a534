# Weighted back-projection of series that have a stack.


rule reconstruct_tomogram:
    input:
        prepared="results/{series}/work/prepared.json",
        stack=series_stack,
        xf="results/{series}/{series}.xf",
        tlt="results/{series}/{series}.tlt",
        zfac=series_zfac,
        surfaces=series_surfaces,
    output:
        tomogram="results/{series}/tomogram.mrc",
        stats="results/{series}/tomogram.json",
    params:
        options=recon_params(config),
    threads: stack_resource("reconstruct", "threads")
    resources:
        mem_mb=stack_resource("reconstruct", "mem_mb"),
        runtime=stack_resource("reconstruct", "runtime"),
    group:
        job_group("reconstruct")
    log:
        "logs/{series}/reconstruct_tomogram.log",
    benchmark:
        "benchmarks/{series}/reconstruct_tomogram.tsv"
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/reconstruct_tomogram.py"
