"""The sanitizer runs of the kernels' CPU emulation (kernels.sanitize).

The case lists are checked in plain Python; the tools themselves are shown to catch a planted
overflow and a planted race in this set-up (g++'s sanitizer runtimes preloaded into a child
Python). The clean run of the CI subset is in .ci/run; the full matrix is
``python -m kernels.sanitize``.
"""
from __future__ import annotations

import pytest

from kernels import conv_cuda, emu, sanitize


def test_ci_subset_covers_every_direction_float4_scalar_and_split_k():
    todo = sanitize.cases("ci")
    plans = [conv_cuda.plan(d, v, cfg, p, sm_count=sanitize.SM_COUNT) for d, v, cfg, p in todo]
    assert {pl.direction for pl in plans} == set(conv_cuda.DIRECTIONS)
    names = [c.name for pl in plans for c in pl.calls]
    assert any(n.startswith("conv_fwd_v4") and n.endswith("true>") for n in names)
    assert any(n.startswith("conv_fwd_v4") and n.endswith("false>") for n in names)
    splits = {conv_cuda.signature(pl)[3] for pl in plans if pl.direction == "bwd_weight"}
    assert 1 in splits and max(splits) > 1 and "splitk_reduce" in names
    assert len({c.source for pl in plans for c in pl.calls}) <= 3   # cheap to build


def test_full_matrix_is_every_version_config_and_edge_shape_plus_batch_128_launches():
    todo = set(sanitize.cases("full"))
    for d in conv_cuda.DIRECTIONS:
        for v in conv_cuda.versions(d):
            for cfg in conv_cuda.configs(d, v):
                for p in sanitize.EDGE_SHAPES:
                    assert (d, v, tuple(cfg), p) in todo
    assert {p.w for p in sanitize.EDGE_SHAPES} >= {7, 14, 28}
    for case in conv_cuda.validation_cases(128, sanitize.SM_COUNT):
        assert (case[0], case[1], tuple(case[2]), case[3]) in todo
    assert sanitize.cases("full", ("bwd_weight",)) == [c for c in sanitize.cases("full")
                                                      if c[0] == "bwd_weight"]


@pytest.mark.skipif(not emu.available() or sanitize.runtime_library("address") is None,
                    reason="needs g++ with libasan")
def test_address_sanitizer_catches_a_planted_overflow():
    rc, out = sanitize.run_tool("address", plant="overflow", timeout=600)
    assert rc != 0 and "heap-buffer-overflow" in out, out[-2000:]


@pytest.mark.skipif(not emu.available() or sanitize.runtime_library("thread") is None,
                    reason="needs g++ with libtsan")
def test_thread_sanitizer_catches_a_planted_race():
    rc, out = sanitize.run_tool("thread", plant="race", timeout=600)
    assert rc != 0 and "data race" in out, out[-2000:]


def test_unknown_direction_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as err:
        sanitize.main(["--directions", "sideways"])
    assert err.value.code == 2 and "unknown direction 'sideways'" in capsys.readouterr().err
