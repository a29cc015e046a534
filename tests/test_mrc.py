"""MRC stacks: modes, memory mapping, and clear errors for bad files."""

import mrcfile
import numpy as np
import pytest

from tiltflow.io import InputError
from tiltflow.io.mrc import Stack, write_stack


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.float32, np.uint16, np.float16])
def test_modes_are_read_as_float32(tmp_path, dtype):
    rng = np.random.default_rng(0)
    hi = 100 if dtype in (np.int8, np.uint8) else 1000
    data = rng.integers(0, hi, (3, 20, 30)).astype(dtype)
    path = tmp_path / "s.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 4.5
    with Stack(path) as st:
        assert st.n_views == 3 and st.shape == (20, 30) and st.pixel_size_angstrom == pytest.approx(4.5)
        v = st.view(1)
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, data[1].astype(np.float32))


def test_imod_unsigned_bytes(tmp_path):
    """Mode 0 written by IMOD holds unsigned bytes: values above 127 must not turn negative."""
    data = np.array([[[10, 200], [250, 3]]], dtype=np.uint8)
    path = tmp_path / "u8.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data.view(np.int8))
        m.header.dmin, m.header.dmax = 3, 250
    with Stack(path) as st:
        np.testing.assert_array_equal(st.view(0), data[0].astype(np.float32))


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_bad_views_are_named(tmp_path):
    data = np.random.default_rng(1).normal(size=(4, 16, 16)).astype(np.float32)
    data[2, 3, 4] = np.nan
    data[3] = 7.0
    path = tmp_path / "bad.mrc"
    write_stack(path, data)
    with Stack(path) as st:
        st.view(0)
        with pytest.raises(InputError, match=r"bad.mrc: view 2 has 1 NaN or Inf pixel"):
            st.view(2)
        with pytest.raises(InputError, match=r"bad.mrc: view 3 is constant"):
            st.view(3)
        with pytest.raises(InputError, match=r"view 9 does not exist \(stack has views 0..3\)"):
            st.view(9)


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "s.mrc"
    write_stack(path, np.ones((4, 32, 32), dtype=np.float32) * np.arange(4)[:, None, None])
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(InputError, match="cut.mrc: not a readable MRC stack"):
        Stack(cut)
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"\0" * 2000)
    with pytest.raises(InputError, match="junk.mrc: not a readable MRC stack"):
        Stack(junk)
    with pytest.raises(InputError, match="stack not found"):
        Stack(tmp_path / "none.mrc")


def test_extended_header_is_skipped(tmp_path):
    path = tmp_path / "ext.mrc"
    data = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.set_extended_header(np.zeros(256, dtype=np.uint8))
    with Stack(path) as st:
        np.testing.assert_array_equal(st.view(1), data[1])


def test_slab_writer_round_trip(tmp_path):
    from tiltflow.io.mrc import SlabWriter

    vol = np.random.default_rng(2).normal(size=(5, 13, 7)).astype(np.float32)
    path = tmp_path / "v.mrc"
    with SlabWriter(path, vol.shape, "float32", 3.5) as w:
        for y0 in range(0, 13, 4):
            w.write(y0, vol[:, y0:y0 + 4])
    with mrcfile.open(path) as m:
        np.testing.assert_array_equal(m.data, vol)
        assert float(m.voxel_size.z) == pytest.approx(3.5)
        assert float(m.header.dmax) == pytest.approx(vol.max())
        assert float(m.header.dmean) == pytest.approx(vol.mean(), abs=1e-6)
