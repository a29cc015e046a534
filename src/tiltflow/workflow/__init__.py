"""The Snakemake side of tiltflow, importable and testable without Snakemake.

- :mod:`~tiltflow.workflow.config`: config -> rule params -> option
  dataclasses; which rule reads which config key.  Light: building the DAG
  imports neither numba nor scipy nor matplotlib.
- :mod:`~tiltflow.workflow.sheet`: the tilt-series sheet (pandas only).
- :mod:`~tiltflow.workflow.steps`: one function per rule (read through
  :mod:`tiltflow.io`, call one package function, write through
  :mod:`tiltflow.io`); the numerics are imported by the rule that uses them.
- :mod:`~tiltflow.workflow.demo`: the demo rules (simulated series).
- :mod:`~tiltflow.workflow.runtime`: logging into rule logs, the
  failure summary after ``--keep-going``.
"""
