"""bench.ab: this checkout's training steps against another revision's, alternating
processes. The run compares HEAD with itself on tiny inputs: both trees' workers must
import their own code, and the report must hold one ratio per pair."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ab

ROOT = Path(__file__).resolve().parents[1]


def _is_git_checkout() -> bool:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                              capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_bad_arguments_are_one_line_errors(capsys):
    assert ab.main(["--batch-sizes", "8,x", "HEAD"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --batch-sizes")
    assert ab.main([]) == 2
    assert "name the revision" in capsys.readouterr().err
    if _is_git_checkout():
        assert ab.main(["no-such-revision-anywhere"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: 'no-such-revision-anywhere' is not a commit of this repository"


@pytest.mark.slow
@pytest.mark.skipif(not _is_git_checkout(), reason="needs a git checkout")
def test_head_against_itself(tmp_path):
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, "-m", "bench.ab", "HEAD", "--pairs", "2",
                           "--steps", "1", "--warmup", "1", "--image-size", "64",
                           "--batch-sizes", "2", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert report["other"]["commit"] == head == report["this"]["commit"]
    (result,) = report["results"]
    assert result["batch"] == 2 and len(result["pairs"]) == 2
    for pair in result["pairs"]:
        assert pair["other_s"] > 0 and pair["this_s"] > 0
        assert pair["ratio"] == pytest.approx(pair["other_s"] / pair["this_s"])
    assert "batch 2:" in proc.stdout and "pairs of processes" in proc.stdout
    assert set(result["blas"]) == {"this", "other"}
    assert "BLAS (this):" in proc.stdout
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                               text=True).stdout
    assert "googlenet-ab-" not in worktrees       # the temporary tree is gone


def test_a_worker_that_measured_another_tree_is_an_error(tmp_path):
    """A tree without the network (or an installed copy found first) would have the
    worker measure other code: the parent refuses its figure, naming where it came from."""
    ab._check_origin(ROOT, {"models_from": str(ROOT)})
    with pytest.raises(ab.AbError, match=f"imported the network from {ROOT}"):
        ab._check_origin(tmp_path, {"models_from": str(ROOT)})
