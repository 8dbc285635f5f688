"""scripts/compare_metrics.py, the gate of scripts/gpu_check.sh: it passes runs that agree within
the tolerance and fails (exit 1) runs that do not, at any level."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, a, b, tol):
    for name, test in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"test": test}))
    return subprocess.run([sys.executable, "scripts/compare_metrics.py", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                           "--tol", str(tol)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _metrics(r4, r64):
    return {"4": {"recall@20": r4, "ndcg@20": r4 / 2}, "64": {"recall@20": r64, "ndcg@20": r64 / 2}}


def test_runs_within_the_tolerance_pass(tmp_path):
    done = _run(tmp_path, _metrics(0.16, 0.35), _metrics(0.17, 0.351), 0.02)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "largest difference 0.0100" in done.stdout


def test_one_level_beyond_the_tolerance_fails(tmp_path):
    done = _run(tmp_path, _metrics(0.16, 0.35), _metrics(0.20, 0.35), 0.02)  # d = 4 off by 0.04
    assert done.returncode == 1
    assert "DISAGREE" in done.stdout
