# Fiducial alignment: import -> coarse -> initial -> main -> tilt -> polish -> IMOD files;
# marker-free series: import -> align_images (coarse + projection matching) -> IMOD files.


rule import_markers:
    input:
        unpack(series_files),
    output:
        prepared="results/{series}/work/prepared.json",
    params:
        row=sheet_row,
    group:
        job_group("import")
    log:
        "logs/{series}/import_markers.log",
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/import_markers.py"


rule align_coarse:
    wildcard_constraints:
        series=names_pattern(MARKER_SERIES),
    input:
        unpack(coarse_inputs),
    output:
        state="results/{series}/stages/coarse.json",
        coarse_xf="results/{series}/coarse.xf",
    params:
        options=coarse_stage_params,
    threads: stack_resource("coarse", "threads")
    resources:
        mem_mb=stack_resource("coarse", "mem_mb"),
        runtime=stack_resource("coarse", "runtime"),
    group:
        job_group("coarse")
    log:
        "logs/{series}/align_coarse.log",
    benchmark:
        "benchmarks/{series}/align_coarse.tsv"
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/align_coarse.py"


rule align_initial:
    wildcard_constraints:
        series=names_pattern(MARKER_SERIES),
    input:
        prepared="results/{series}/work/prepared.json",
        state="results/{series}/stages/coarse.json",
    output:
        state="results/{series}/stages/initial.json",
    params:
        stage="initial",
        options=stage_params("initial", config),
    group:
        "align"
    log:
        "logs/{series}/align_initial.log",
    conda:
        "../envs/tiltflow.yaml"
    benchmark:
        "benchmarks/{series}/align_initial.tsv"
    script:
        "../scripts/align_stage.py"


use rule align_initial as align_main with:
    input:
        prepared="results/{series}/work/prepared.json",
        state="results/{series}/stages/initial.json",
    output:
        state="results/{series}/stages/main.json",
    params:
        stage="main",
        options=stage_params("main", config),
    log:
        "logs/{series}/align_main.log",
    conda:
        "../envs/tiltflow.yaml"
    benchmark:
        "benchmarks/{series}/align_main.tsv"


use rule align_initial as align_tilt with:
    input:
        unpack(distortion_start("tilt")),
        prepared="results/{series}/work/prepared.json",
        state="results/{series}/stages/main.json",
    output:
        state="results/{series}/stages/tilt.json",
    params:
        stage="tilt",
        options=stage_params("tilt", config),
    log:
        "logs/{series}/align_tilt.log",
    conda:
        "../envs/tiltflow.yaml"
    benchmark:
        "benchmarks/{series}/align_tilt.tsv"


use rule align_initial as align_polish with:
    input:
        unpack(distortion_start("polish")),
        prepared="results/{series}/work/prepared.json",
        state="results/{series}/stages/tilt.json",
    output:
        state="results/{series}/stages/polish.json",
    params:
        stage="polish",
        options=stage_params("polish", config),
    log:
        "logs/{series}/align_polish.log",
    conda:
        "../envs/tiltflow.yaml"
    benchmark:
        "benchmarks/{series}/align_polish.tsv"


rule write_alignment:
    wildcard_constraints:
        series=names_pattern(MARKER_SERIES),
    input:
        prepared="results/{series}/work/prepared.json",
        state=final_stage,
        coarse="results/{series}/stages/coarse.json",
        stack=refine_stack,
    output:
        xf="results/{series}/{series}.xf",
        tlt="results/{series}/{series}.tlt",
        xyz="results/{series}/{series}.xyz",
        fiducials="results/{series}/fiducials.tsv",
        summary="results/{series}/summary.json",
        views="results/{series}/views.tsv",
        markers="results/{series}/markers.tsv",
        large_residuals="results/{series}/large_residuals.tsv",
        resid="results/{series}/{series}.resid",
        solution="results/{series}/taSolution.log",
        zfac="results/{series}/{series}.zfac",
        xtilt="results/{series}/{series}.xtilt",
    params:
        options=write_alignment_params,
    threads: stack_resource("coarse", "threads")
    resources:
        mem_mb=stack_resource("coarse", "mem_mb"),
        runtime=stack_resource("coarse", "runtime"),
    group:
        write_alignment_group
    log:
        "logs/{series}/write_alignment.log",
    benchmark:
        "benchmarks/{series}/write_alignment.tsv"
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/write_alignment.py"


rule align_images:
    wildcard_constraints:
        series=names_pattern(IMAGE_SERIES),
    input:
        prepared="results/{series}/work/prepared.json",
        stack=series_stack,
    output:
        xf="results/{series}/{series}.xf",
        tlt="results/{series}/{series}.tlt",
        coarse_xf="results/{series}/coarse.xf",
        views="results/{series}/views.tsv",
        summary="results/{series}/summary.json",
    params:
        options=images_params(config),
    threads: stack_resource("coarse", "threads")
    resources:
        mem_mb=stack_resource("coarse", "mem_mb"),
        runtime=stack_resource("coarse", "runtime"),
    group:
        job_group("coarse")
    log:
        "logs/{series}/align_images.log",
    benchmark:
        "benchmarks/{series}/align_images.tsv"
    conda:
        "../envs/tiltflow.yaml"
    script:
        "../scripts/align_images.py"
