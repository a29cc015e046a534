# Cross-series summary.


rule summarize:
    input:
        summaries=expand("results/{series}/summary.json", series=SERIES),
    output:
        tsv="results/summary.tsv",
    log:
        "logs/summarize.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/summarize.py"
