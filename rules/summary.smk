# Cross-series summary.


rule summarize:
    input:
        summaries=expand("results/{series}/summary.json", series=SERIES),
    output:
        tsv=report(
            "results/summary.tsv",
            caption="../report/summary_table.rst",
            category="Summary",
            labels={"table": "all series"},
        ),
    log:
        "logs/summarize.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/summarize.py"
