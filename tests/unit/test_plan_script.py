import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _plan(*args):
    out = subprocess.run([sys.executable, "scripts/plan.py", "--json", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_internet_scale_plan_allocates_nothing_large():
    # 1e9 x 1e8 rows of 64 float32 are 282 GB: planned on the meta device, the process stays small.
    plan = _plan("--users", "1e9", "--items", "1e8", "--world-size", "256", "--hbm-gb", "80", "--sharding", "row_wise")
    assert plan["peak_rss_mb"] < 2048
    assert {t["table"] for t in plan["tables"]} == {"user", "item"}
    assert all(t["sharding"] == "row_wise" and t["shards"] == 256 for t in plan["tables"])
    # Rows and the row-wise Adagrad state (one float per row) over 256 ranks, and nothing more.
    rows = 1e9 + 1e8
    assert plan["table_bytes_total"] >= rows * (64 + 1) * 4
    assert plan["bytes_per_rank"]["max"] <= 1.05 * plan["table_bytes_total"] / 256 + (1 << 20)


def test_books_plan_on_eight_gpus_fits_and_places_both_tables():
    plan = _plan("--users", "603668", "--items", "367982", "--world-size", "8", "--hbm-gb", "80")
    assert plan["bytes_per_rank"]["max"] < 80 * (1 << 30)
    assert sorted(t["rows"] for t in plan["tables"]) == [367982, 603668]
