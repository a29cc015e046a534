"""Rule write_provenance: results/{series}/provenance.json."""
from tiltflow.workflow import provenance
from tiltflow.workflow.runtime import run_logged

run_logged(
    snakemake.log[0],
    provenance.write_provenance,
    dict(snakemake.params.row),
    dict(snakemake.params.config),
    snakemake.params.workflow_dir,
    snakemake.params.log_dir,
    [str(p) for p in snakemake.input],
    snakemake.output.provenance,
)
