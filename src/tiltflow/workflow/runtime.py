"""What runs around the steps: the package path for jobs, logging into the rule's log, failures logged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def run_logged(log_path, func, *args, **kwargs):
    """Run a step with logging sent to ``log_path``; failures are logged with
    their traceback, then re-raised so that Snakemake marks the job failed."""
    setup_logging(log_path)
    try:
        return func(*args, **kwargs)
    except Exception:
        log.exception("%s failed", func.__name__)
        raise


def setup_logging(path):
    """Send the package's logging to a rule's log file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def jobs_import_from(src_dir):
    """Make jobs started from this process import tiltflow from ``src_dir`` (first on ``PYTHONPATH``).

    The workflow calls this with its checkout's ``src`` (after putting it
    first on its own ``sys.path``), so that rules run the package that
    belongs to the Snakefile, also inside a conda environment that holds
    only the dependencies.
    """
    src = str(src_dir)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *rest])


def made_by_a_rule(workflow, path):
    """Whether one of the workflow's rules produces ``path`` (e.g. the demo's simulated files)."""
    return any(rule.is_producer(path) for rule in workflow.rules)
