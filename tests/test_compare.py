"""`compare()` on a saved random tiny model: one run writes results.json / results.md / plots.png, and the
full-precision row measures the teacher against its own trajectories (no frontier flips)."""
import json

import pytest

from faircalib.calib.layerwise import CalibOptions
from faircalib.calib.pipeline import Recipe
from faircalib.compare import FP, CompareSettings, compare, markdown_table
from faircalib.zoo import TASKS
from tests.calib.conftest import saved_tiny_checkpoint


@pytest.fixture
def saved_model(tmp_path):
    return saved_tiny_checkpoint("llada", tmp_path / "tiny")


@pytest.mark.parametrize("field", ["n_calib", "n_eval", "n_metric", "metric_max_states"])
def test_settings_need_at_least_one_of_each(field):
    with pytest.raises(ValueError, match=f"{field}"):
        CompareSettings(**{field: 0})


def test_compare_writes_the_report(saved_model, tmp_path):
    out = tmp_path / "report"
    settings = CompareSettings(n_calib=len(TASKS), n_eval=1, n_metric=1, metric_max_states=2)
    results = compare(str(saved_model), [FP, "rtn"], Recipe(options=CalibOptions(epochs=0)), settings,
                      out_dir=out, progress=False)
    for name in ("results.json", "results.md", "plots.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert list(results["methods"]) == [FP, "rtn"]
    fp, rtn = results["methods"][FP], results["methods"]["rtn"]
    assert fp["flips"]["rate"] == 0 and fp["flips"]["early"] == 0 and fp["flips"]["late"] == 0
    assert fp["recovery"] in (1.0, None)  # None: a random model may score 0, where recovery is undefined
    assert 0 <= rtn["flips"]["rate"] <= 1 and "stage2_seconds" in rtn
    assert (out / "rtn" / "calibration.json").exists()
    table = (out / "results.md").read_text()
    assert table == markdown_table(results) + "\n"
    assert [row.split("|")[1].strip() for row in table.splitlines()[2:]] == [FP, "rtn"]  # header, divider, rows
