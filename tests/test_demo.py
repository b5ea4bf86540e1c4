"""The interim `cringe demo --quick` runs end to end and writes its report."""

import json

from cringe.demo import main


def test_demo_quick_writes_a_report(tmp_path):
    main(["--quick", "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["loss"] for r in results["results"]} == {"pairwise_cringe", "binary_cringe", "dpo", "ipo", "hinge", "sft"}
    assert all(r["last_loss"] < r["first_loss"] for r in results["results"])
    assert "| pairwise_cringe |" in (tmp_path / "report.md").read_text()
