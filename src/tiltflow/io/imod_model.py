"""IMOD binary models (``.mod``, ``.fid``): read, and write for tests and demos.

Format (IMOD ``binspec``): big-endian; ``IMOD`` ``V1.2`` then a 232-byte
model header, then chunks each starting with a 4-character id.  ``OBJT``
(176-byte header), ``CONT`` (16-byte header + ``3 * psize`` floats) and
``MESH`` (16-byte header + vertices + indices) carry no size field; every
other chunk (``SIZE``, ``IMAT``, ``VIEW``, ``MINX``, ``SLAN``, ``MOST``,
``OBST``, ``COST``, ``MEPA``, ``CLIP``, ``LABL``, ...) is its id, a 4-byte
size and that many bytes.  ``IEOF`` ends the file.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from .errors import InputError

_MODEL_HEADER = struct.Struct(">128s3iiI4i3f3f5ifi i3f".replace(" ", ""))
_OBJECT_HEADER = struct.Struct(">64s16iiIii3fi8B2i")
_CONTOUR_HEADER = struct.Struct(">iIii")
_MESH_HEADER = struct.Struct(">iiIhh")
assert _MODEL_HEADER.size == 232 and _OBJECT_HEADER.size == 176


@dataclasses.dataclass(frozen=True)
class ImodObject:
    """One object: its name and its contours, each an ``(n_points, 3)`` array of x, y, z."""

    name: str
    contours: tuple


@dataclasses.dataclass(frozen=True)
class ImodModel:
    """A parsed IMOD model.

    Attributes
    ----------
    objects : tuple of ImodObject
    size_xyz : tuple of 3 ints
        ``xmax, ymax, zmax`` of the header (image size the model was made on).
    pixel_size : float
        Header pixel size (in ``units``; 0 = pixels).
    units : int
    """

    objects: tuple
    size_xyz: tuple
    pixel_size: float
    units: int


def read_imod_model(path):
    """Read an IMOD binary model.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    ImodModel

    Raises
    ------
    InputError
        Not an IMOD model, or truncated; the message names the file and the
        byte offset.
    """
    with open(path, "rb") as f:
        data = f.read()
    return parse_imod_model(data, str(path))


def parse_imod_model(data, name="<bytes>"):
    """Parse the bytes of an IMOD binary model (see :func:`read_imod_model`)."""
    if len(data) < 8 or data[:4] != b"IMOD":
        raise InputError(f"{name}: not an IMOD binary model (expected the bytes 'IMOD' at the start, found {data[:4]!r})")
    pos = 8
    hdr = _unpack(_MODEL_HEADER, data, pos, name, "model header")
    pos += _MODEL_HEADER.size
    size_xyz = tuple(int(v) for v in hdr[1:4])
    pixel_size, units = float(hdr[21]), int(hdr[22])
    objects = []
    current = None
    while True:
        if pos == len(data):
            break  # IEOF is optional in practice
        if pos + 4 > len(data):
            raise InputError(f"{name}: truncated at byte {pos} (expected a 4-byte chunk id)")
        cid = data[pos : pos + 4]
        pos += 4
        if cid == b"IEOF":
            break
        if cid == b"OBJT":
            oh = _unpack(_OBJECT_HEADER, data, pos, name, "object header")
            pos += _OBJECT_HEADER.size
            current = {"name": oh[0].split(b"\0", 1)[0].decode("latin-1"), "contours": []}
            objects.append(current)
        elif cid == b"CONT":
            if current is None:
                raise InputError(f"{name}: contour at byte {pos - 4} before any object")
            psize = _unpack(_CONTOUR_HEADER, data, pos, name, "contour header")[0]
            pos += _CONTOUR_HEADER.size
            nbytes = 12 * psize
            if psize < 0 or pos + nbytes > len(data):
                raise InputError(
                    f"{name}: truncated contour {len(current['contours']) + 1} of object {len(objects)} "
                    f"at byte {pos} (expected {psize} points = {nbytes} bytes, {len(data) - pos} left)"
                )
            pts = np.frombuffer(data, dtype=">f4", count=3 * psize, offset=pos).reshape(psize, 3)
            current["contours"].append(pts.astype(float))
            pos += nbytes
        elif cid == b"MESH":
            vsize, lsize = _unpack(_MESH_HEADER, data, pos, name, "mesh header")[:2]
            pos += _MESH_HEADER.size + 12 * vsize + 4 * lsize
        elif cid.isalpha() or cid.isalnum():
            size = _unpack(struct.Struct(">i"), data, pos, name, f"size of chunk {cid.decode('latin-1')}")[0]
            pos += 4 + size
        else:
            raise InputError(f"{name}: unknown chunk id {cid!r} at byte {pos - 4}; the file is corrupt or not an IMOD model")
        if pos > len(data):
            raise InputError(f"{name}: truncated inside a chunk ending at byte {pos} (file has {len(data)} bytes)")
    objs = tuple(ImodObject(o["name"], tuple(o["contours"])) for o in objects)
    return ImodModel(objs, size_xyz, pixel_size, units)


def _unpack(st, data, pos, name, what):
    if pos + st.size > len(data):
        raise InputError(f"{name}: truncated {what} at byte {pos} (needs {st.size} bytes, {len(data) - pos} left)")
    return st.unpack_from(data, pos)


def write_imod_model(path, contours, size_xyz, pixel_size=1.0, object_name="fiducials"):
    """Write a one-object IMOD model whose contours are the given point lists.

    Parameters
    ----------
    path : str or path-like
    contours : sequence of ndarray, shape (n_points, 3)
        x, y, z of each contour's points (z = view index for fiducials).
    size_xyz : tuple of 3 ints
        Image size ``nx, ny, nz``.
    pixel_size : float
    object_name : str
    """
    out = bytearray(b"IMODV1.2")
    out += _MODEL_HEADER.pack(
        b"tiltflow", *size_xyz, 1, 0, 1, 1, 0, 255, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0,
        0, 0, 0, 1, 128, float(pixel_size), 0, 0, 0.0, 0.0, 0.0,
    )
    extra = [0] * 16
    out += b"OBJT" + _OBJECT_HEADER.pack(
        object_name.encode()[:63], *extra, len(contours), 0, 0, 1, 0.0, 1.0, 0.0, 0,
        1, 3, 1, 1, 0, 0, 0, 0, 0, 0,
    )
    for pts in contours:
        pts = np.asarray(pts, dtype=">f4").reshape(-1, 3)
        out += b"CONT" + _CONTOUR_HEADER.pack(len(pts), 0, 0, 0) + pts.tobytes()
    out += b"IEOF"
    with open(path, "wb") as f:
        f.write(bytes(out))
