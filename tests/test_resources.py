"""Cluster resources of the heavy jobs, from the stack's MRC header."""

import subprocess
import sys

import numpy as np
import pytest

from tiltflow.io.mrc import write_stack
from tiltflow.workflow import resources
from tiltflow.workflow.resources import StackHeader, read_header, stack_resources


def test_header_is_read_without_numpy_in_either_byte_order(tmp_path):
    path = tmp_path / "s.mrc"
    write_stack(path, np.zeros((7, 30, 50), dtype=np.int16))
    assert read_header(path) == StackHeader(nx=50, ny=30, nz=7, mode=1)
    head = bytearray(path.read_bytes()[:1024])
    for k in range(4):  # the same header written big-endian
        head[4 * k:4 * k + 4] = head[4 * k:4 * k + 4][::-1]
    swapped = tmp_path / "b.mrc"
    swapped.write_bytes(bytes(head))
    assert read_header(swapped) == StackHeader(50, 30, 7, 1)
    short = tmp_path / "short.mrc"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="short.mrc: 100 bytes, shorter than the 1024-byte MRC header"):
        read_header(short)
    # read while the DAG is built: the module loads no numpy
    code = "import sys, tiltflow.workflow.resources; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resources_grow_with_the_stack_and_fit_the_measurements():
    small = StackHeader(512, 512, 61, 2)  # the demo stack: coarse peaked at 0.58 GB, 5 s
    big = StackHeader(2048, 2048, 61, 2)  # 1 GB float32: reconstruction peaked at 2.9 GB, 88 s on 2 cores
    c_small, c_big = resources.coarse_resources(small), resources.coarse_resources(big)
    r_small = resources.reconstruct_resources(small, binning=1, thickness=500)
    r_big = resources.reconstruct_resources(big, binning=1, thickness=500)
    assert c_small.mem_mb >= 580 and r_big.mem_mb >= 2900
    assert r_big.runtime >= 88 / 60 and c_big.runtime > c_small.runtime
    assert c_big.mem_mb > c_small.mem_mb and r_big.mem_mb > r_small.mem_mb
    assert (c_small.threads, c_big.threads, r_big.threads) == (2, 4, 4)
    binned = resources.reconstruct_resources(big, binning=2, thickness=500)
    assert binned.mem_mb < r_big.mem_mb and binned.runtime <= r_big.runtime
    # a byte stack is mapped in a quarter of the pages of a float one
    assert resources.coarse_resources(StackHeader(2048, 2048, 61, 0)).mem_mb < c_big.mem_mb


def test_without_a_stack_or_before_it_exists_a_light_job_is_asked_for(tmp_path):
    light = resources.JobResources(1, resources.BASE_MB, 10)
    assert stack_resources("coarse", None) == light
    assert stack_resources("reconstruct", tmp_path / "not_yet.mrc") == light
    path = tmp_path / "s.mrc"
    write_stack(path, np.zeros((61, 64, 64), dtype=np.float32))
    assert stack_resources("reconstruct", path, binning=2, thickness=40).threads == 2
    with pytest.raises(ValueError, match="kind must be 'coarse' or 'reconstruct', got 'align'"):
        stack_resources("align", path)
