"""File formats: IMOD models and text files, marker tables, MRC headers.

Everything that touches a file lives here; numerics live elsewhere.  The
names below are loaded from their submodule on first use, so that a job
needing only ``io.tables`` (provenance, the summary) does not import numpy.
"""

import importlib

from .errors import InputError

_SUBMODULE = {
    "ImodModel": "imod_model",
    "ImodObject": "imod_model",
    "parse_imod_model": "imod_model",
    "read_imod_model": "imod_model",
    "write_imod_model": "imod_model",
    "read_tilts": "imod_text",
    "read_xf": "imod_text",
    "read_xyz": "imod_text",
    "write_resid": "imod_text",
    "write_solution_table": "imod_text",
    "write_tlt": "imod_text",
    "write_xf": "imod_text",
    "write_xyz": "imod_text",
    "write_zfac": "imod_text",
    "write_xtilt": "imod_text",
    "read_xtilt": "imod_text",
    "read_zfac": "imod_text",
    "MdocTilts": "mdoc",
    "is_mdoc": "mdoc",
    "read_mdoc": "mdoc",
    "MarkerTable": "markers",
    "read_markers": "markers",
    "write_markers_csv": "markers",
    "write_point_text": "markers",
}

__all__ = ["InputError", *sorted(_SUBMODULE)]


def __getattr__(name):
    if name in _SUBMODULE:
        value = getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULE])
