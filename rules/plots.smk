# Diagnostic plots, registered for `snakemake --report report.html`.


localrules:
    plot_summary,


rule plot_alignment:
    wildcard_constraints:
        series=names_pattern(MARKER_SERIES),
    input:
        fiducials="results/{series}/fiducials.tsv",
        views="results/{series}/views.tsv",
        markers="results/{series}/markers.tsv",
        summary="results/{series}/summary.json",
    output:
        residual_vs_tilt=plot_output("residual_vs_tilt"),
        residual_vectors=plot_output("residual_vectors"),
        trajectories=plot_output("trajectories"),
        tilt_change=plot_output("tilt_change"),
        rotation_scale=plot_output("rotation_scale"),
        markers_xz=plot_output("markers_xz"),
    group:
        "align"
    log:
        "logs/{series}/plot_alignment.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/plot_alignment.py"


rule plot_images:
    wildcard_constraints:
        series=names_pattern(IMAGE_SERIES),
    input:
        views="results/{series}/views.tsv",
        summary="results/{series}/summary.json",
    output:
        png=plot_output("projection_matching"),
    group:
        "align"
    log:
        "logs/{series}/plot_images.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/plot_images.py"


rule plot_tomogram:
    input:
        tomogram="results/{series}/tomogram.mrc",
    output:
        png=plot_output("tomogram"),
    group:
        job_group("plot_tomogram")
    log:
        "logs/{series}/plot_tomogram.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/plot_tomogram.py"


rule plot_summary:
    input:
        tsv="results/summary.tsv",
    output:
        png=report(
            "results/summary.png",
            caption="../report/summary_plot.rst",
            category="Summary",
            labels={"figure": "residuals"},
        ),
    log:
        "logs/plot_summary.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/plot_summary.py"
