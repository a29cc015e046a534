"""SerialEM ``.mdoc`` files (read with the ``mdocfile`` package): tilt angles by ``ZValue``,
pixel size and the tilt-axis angle of the acquisition."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

import numpy as np

from .errors import InputError

#: The tilt-axis angle in the title line SerialEM writes, ``[T = ... Tilt axis angle = 85.3, binning = 1 ...]``.
AXIS_TITLE = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class MdocTilts:
    """What a tilt series' ``.mdoc`` says.

    Attributes
    ----------
    tilt_deg : ndarray, shape (n_views,)
        ``TiltAngle`` of each section, in ``ZValue`` order (view ``i`` is ``ZValue = i``).
    pixel_size_angstrom : float or None
        ``PixelSpacing`` (global, or of the first section).
    tilt_axis_deg : float or None
        From the ``Tilt axis angle = ...`` title line.
    """

    tilt_deg: np.ndarray
    pixel_size_angstrom: float | None
    tilt_axis_deg: float | None


def is_mdoc(path):
    """Whether ``path`` names a SerialEM ``.mdoc`` (by its extension)."""
    return str(path).lower().endswith(".mdoc")


def read_mdoc(path) -> MdocTilts:
    """Read the tilt angles, pixel size and tilt-axis angle of a SerialEM ``.mdoc``.

    Raises
    ------
    InputError
        Missing or unreadable file, no sections, ``ZValue``\\ s that are not
        ``0 .. n-1`` each once, a section without ``TiltAngle`` -- naming
        the file and the section.
    """
    from mdocfile.data_models import Mdoc

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mdoc file not found")
    logging.getLogger("mdocfile").setLevel(logging.ERROR)  # SerialEM's many extra keys are kept, not news
    try:
        mdoc = Mdoc.from_file(str(path))
    except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
        first = str(err).strip().splitlines()
        raise InputError(f"{path}: not a readable SerialEM mdoc ({first[0] if first else err})") from None
    sections = mdoc.section_data
    if not sections:
        raise InputError(f"{path}: no [ZValue = ...] sections; expected one section per view")
    z = [s.ZValue for s in sections]
    for k, (value, section) in enumerate(zip(z, sections)):
        if value is None:
            raise InputError(f"{path}: section {k + 1} has no ZValue; expected [ZValue = n] headers")
        if section.TiltAngle is None or not math.isfinite(section.TiltAngle):
            raise InputError(f"{path}: section [ZValue = {value}] has no TiltAngle; expected one per section")
    if sorted(z) != list(range(len(z))):
        dup = sorted({v for v in z if z.count(v) > 1})
        missing = sorted(set(range(len(z))) - set(z))
        detail = "; ".join(p for p in (f"repeated {dup}" if dup else "", f"missing {missing}" if missing else "") if p)
        raise InputError(f"{path}: ZValues must be 0..{len(z) - 1}, each once ({len(z)} sections); {detail}")
    order = np.argsort(z)
    tilts = np.array([sections[i].TiltAngle for i in order], dtype=float)
    pixel = mdoc.global_data.PixelSpacing or sections[int(order[0])].PixelSpacing
    axis = None
    for title in mdoc.titles:
        m = AXIS_TITLE.search(title)
        if m:
            axis = float(m.group(1))
            break
    return MdocTilts(tilts, float(pixel) if pixel else None, axis)
