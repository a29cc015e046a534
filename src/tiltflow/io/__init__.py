"""File formats: IMOD models and text files, marker tables, MRC headers.

Everything that touches a file lives here; numerics live elsewhere.
"""

from .errors import InputError
from .imod_model import ImodModel, ImodObject, parse_imod_model, read_imod_model, write_imod_model
from .imod_text import read_tilts, read_xf, read_xyz, write_tlt, write_xf, write_xyz
from .markers import MarkerTable, read_markers, write_markers_csv, write_point_text

__all__ = [
    "ImodModel",
    "ImodObject",
    "InputError",
    "MarkerTable",
    "parse_imod_model",
    "read_imod_model",
    "read_markers",
    "read_tilts",
    "read_xf",
    "read_xyz",
    "write_imod_model",
    "write_markers_csv",
    "write_point_text",
    "write_tlt",
    "write_xf",
    "write_xyz",
]
