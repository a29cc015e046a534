# Cross-series summary.


localrules:
    summarize,


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


# After a run with failures (e.g. --keep-going): what finished, what failed and where to look.
onerror:
    from tiltflow.workflow.summary import partial_summary

    partial_summary(SERIES, "results/summary.partial.tsv")


onsuccess:
    Path("results/summary.partial.tsv").unlink(missing_ok=True)


rule write_provenance:
    input:
        unpack(provenance_inputs),
    output:
        provenance="results/{series}/provenance.json",
    params:
        row=sheet_row,
        config=config,
        workflow_dir=workflow.basedir,
        log_dir="logs/{series}",
    group:
        job_group("provenance")
    log:
        "logs/{series}/write_provenance.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/write_provenance.py"
