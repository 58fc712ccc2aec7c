"""scripts/subset_table.py: re-pooling an evaluate run's per-image outputs over a subset of its images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "docs" / "results" / "sam2-small-encoder-experiments"  # a committed evaluate run


def _subset(tmp_path: Path, skip: int) -> dict:
    out = tmp_path / f"skip{skip}.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "subset_table.py"), str(RUN), "--skip", str(skip),
                    "--out", str(out)], check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def test_no_skip_reproduces_the_run_and_a_skip_changes_it(tmp_path):
    key = lambda r: (r["defense"], r["mode"], r["attack"], r["evaluated_with"])  # noqa: E731
    original = {key(r): r for r in json.loads((RUN / "results.json").read_text())["records"]}
    whole = {key(r): r for r in _subset(tmp_path, 0)["records"]}
    # re-pooling adds the worst case per object over each defense's attacks (the committed run predates it)
    worst = {k: r for k, r in whole.items() if r["mode"] == "worst-case"}
    assert whole.keys() - worst.keys() == original.keys()
    assert all(whole[k]["miou_gt"] == original[k]["miou_gt"] and whole[k]["n"] == original[k]["n"] for k in original)
    for (defense, _, _, prompt), record in worst.items():
        attacked = [r["miou_gt"] for k, r in original.items() if k[0] == defense and k[3] == prompt]
        assert record["miou_gt"] <= min(attacked) + 1e-9  # per object, never above any single attack
    later = _subset(tmp_path, 10)
    assert later["images"] == 10
    assert all(r["images"] == 10 and r["n"] < whole[key(r)]["n"] for r in later["records"])


def test_nothing_left_is_a_clear_error():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "subset_table.py"), str(RUN), "--skip", "20"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "nothing is left after --skip 20" in result.stderr
