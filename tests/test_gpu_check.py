"""bench.gpu_check, the prepared command for a GPU machine, exercised on the CPU: a dry run
records every GPU step as skipped and still writes its JSON and summary; step caps kill a
step (and what it started), the global deadline skips later steps, failures set the exit
status; the summary's cuDNN ratio is computed from bench.conv_throughput's totals."""
from __future__ import annotations

import json
import sys
import time

import pytest

from bench import gpu_check


def test_dry_run_skips_gpu_steps_and_writes_json_and_summary(tmp_path, capsys):
    assert gpu_check.main([str(tmp_path / "out"), "--dry-run", "--budget", "120"]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == [s.name for s in gpu_check.plan(tmp_path)]
    assert steps["env"]["status"] == "passed"
    env = steps["env"]["figures"]
    assert env["python"] and "numpy" in env and "gpu_unusable" in env
    for name, r in steps.items():
        if name != "env":
            assert r["status"] == "skipped" and "--dry-run" in r["reason"], name
    assert (tmp_path / "out" / "env.log").exists()
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| train | skipped |" in text and "| env | passed |" in text
    assert "wrote" in capsys.readouterr().out


def _steps(*specs):
    return [gpu_check.Step(name, cap, False, name, [sys.executable, "-c", code])
            for name, cap, code in specs]


def test_caps_deadline_and_failures(tmp_path, monkeypatch):
    # "slow" starts a grandchild that would outlive a plain kill of its parent.
    slow = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); time.sleep(60)")
    monkeypatch.setattr(gpu_check, "plan", lambda out: _steps(
        ("ok", 30, "print('fine')"), ("bad", 30, "raise SystemExit(3)"),
        ("capped", 1.5, slow), ("cut", 100, slow), ("late", 30, "print('never')")))
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1)
    t0 = time.monotonic()
    rc = gpu_check.main([str(tmp_path), "--budget", "8"])
    took = time.monotonic() - t0
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert rc == 1 and took < 20
    assert steps["ok"]["status"] == "passed" and "fine" in steps["ok"]["tail"]
    assert steps["bad"]["status"] == "failed" and steps["bad"]["rc"] == 3
    # Its own cap stops the first slow step; the global deadline the second one.
    assert steps["capped"]["status"] == "timed out" and steps["capped"]["cap_s"] == 1.5
    assert steps["capped"]["seconds"] < 5
    assert steps["cut"]["status"] == "timed out" and steps["cut"]["cap_s"] < 8
    assert steps["late"]["status"] == "skipped" and "deadline" in steps["late"]["reason"]


def test_gpu_steps_follow_the_env_steps_verdict(tmp_path, monkeypatch):
    steps = _steps(("env", 30, "print('env')"), ("needs_gpu", 30, "print('ran')"))
    steps[1].gpu = True
    monkeypatch.setattr(gpu_check, "plan", lambda out: steps)
    (tmp_path / "env.json").write_text(json.dumps({"gpu_unusable": "CuPy sees no CUDA device"}))
    assert gpu_check.main([str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["needs_gpu"]
    assert r["status"] == "skipped" and r["reason"] == "no usable GPU: CuPy sees no CUDA device"


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    for argv, msg in (([str(tmp_path), "--only", "nope"], "unknown step(s) ['nope']"),
                      ([str(tmp_path), "--budget", "0"], "--budget must be positive")):
        with pytest.raises(SystemExit) as err:
            gpu_check.main(argv)
        assert err.value.code == 2 and msg in capsys.readouterr().err


def test_summary_ratio_against_cudnn(tmp_path):
    totals = {d: {"layers": ["a", "b"], "impls": {
        "torch-cudnn-fp32": {"ms": 2.0, "tflops": 10.0}, "custom-best": {"ms": ms, "tflops": 20.0}}}
        for d, ms in (("fwd", 1.0), ("bwd_data", 1.0), ("bwd_weight", 4.0))}
    path = tmp_path / "conv_throughput.json"
    path.write_text(json.dumps({"totals": totals}))
    lines = gpu_check.conv_lines(path)
    assert lines[0].startswith("conv fwd (2 layers), TFLOP/s: torch-cudnn-fp32 10.0")
    # cuDNN 6 ms in all, ours 6 ms: a ratio of exactly 1.
    assert lines[-1].endswith("torch-cudnn-fp32 1.00, custom-best 1.00")
