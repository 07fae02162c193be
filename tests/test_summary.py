"""`hf-instruct summarize`: several pipeline runs' comparison.json read as one result, mean ± sd over the runs."""

import json
import statistics

import pytest

from hf_instruct.cli import main
from hf_instruct.pipeline import COMPARISON_SCHEMA, SUITE_SPLITS
from hf_instruct.summary import read_comparisons, summarize_runs, summary_markdown


def model_result(accuracy: float, difference: float, low: float, win_rate: float) -> dict:
    splits = {split: {"accuracy": accuracy + i / 10, "floor": 0.1 * (i + 1)} for i, split in enumerate(SUITE_SPLITS)}
    vs_sft = {"difference": difference, "interval": [low, low + 0.04], "p": 0.5}
    return {"splits": splits, "perplexity": 1.5, "pooled": {"vs_sft": vs_sft, "win_rate_vs_sft": win_rate}}


def write_run(path, results: dict, schema: int = COMPARISON_SCHEMA):
    path.mkdir()
    (path / "comparison.json").write_text(json.dumps({"schema": schema, "results": results}))
    return path


@pytest.fixture
def three_runs(tmp_path):
    """Three seeds; `dpo` was compared in two of them only."""
    runs = []
    for seed, (accuracy, difference, low) in enumerate([(0.5, 0.02, 0.001), (0.6, -0.01, -0.03), (0.7, 0.05, 0.03)]):
        results = {
            "sft": model_result(0.4, 0.0, 0.0, 0.5),
            "ppo": model_result(accuracy, difference, low, 0.5 + difference),
        }
        if seed < 2:
            results["dpo"] = model_result(0.5, 0.0, -0.02, 0.5)
        runs.append(write_run(tmp_path / f"run-{seed}", results))
    return runs


def test_summary_gives_mean_and_sample_sd_of_every_figure_over_the_runs(three_runs):
    summary = summarize_runs(read_comparisons(three_runs))
    assert summary["runs"] == [str(run) for run in three_runs]
    assert list(summary["models"]) == ["sft", "ppo"]  # only the models every run compared, in the runs' order
    ppo = summary["models"]["ppo"]
    entities = ppo["splits"][SUITE_SPLITS[0]]
    assert entities["values"] == [0.5, 0.6, 0.7]
    assert entities["mean"] == pytest.approx(0.6) and entities["sd"] == pytest.approx(0.1)  # sample sd (n - 1)
    assert ppo["splits"][SUITE_SPLITS[2]]["mean"] == pytest.approx(0.8)
    assert summary["floors"][SUITE_SPLITS[1]] == {"mean": pytest.approx(0.2), "sd": 0.0, "values": [0.2] * 3}
    pooled = ppo["pooled_vs_sft"]
    assert pooled["mean"] == pytest.approx(0.02) and pooled["sd"] == pytest.approx(
        statistics.stdev([0.02, -0.01, 0.05])
    )
    assert pooled["above_zero"] == 2  # the intervals' low ends: 0.001 and 0.03 above 0, -0.03 not
    assert ppo["win_rate_vs_sft"]["mean"] == pytest.approx(0.52)
    assert "pooled_vs_sft" not in summary["models"]["sft"]  # SFT against itself says nothing


def test_summary_markdown_shows_mean_sd_and_each_runs_interval(three_runs):
    lines = summary_markdown(summarize_runs(read_comparisons(three_runs)))
    assert (
        "| ppo | 0.600 ± 0.100 | 0.700 ± 0.100 | 0.800 ± 0.100 | +0.020 ± 0.030 (2/3 above 0) | 0.520 ± 0.030 |"
        in ("\n".join(lines))
    )
    assert "| floor | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.300 ± 0.000 |  |  |  |" in lines
    assert "- ppo: +0.020 [+0.001, +0.041]; -0.010 [-0.030, +0.010]; +0.050 [+0.030, +0.070]" in lines


def test_summarize_command_prints_and_writes_the_table(three_runs, tmp_path, capsys):
    output = tmp_path / "summary.md"
    assert main(["summarize", *map(str, three_runs), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert printed == output.read_text() and printed.startswith("Mean ± sd over 3 runs: ")


def test_summarize_refuses_a_folder_without_a_comparison_or_of_another_schema(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["summarize", str(tmp_path / "missing")])
    assert "missing: no comparison.json (run `hf-instruct pipeline --output_dir" in capsys.readouterr().err
    old = write_run(tmp_path / "old", {}, schema=COMPARISON_SCHEMA - 1)
    with pytest.raises(ValueError, match=f"schema {COMPARISON_SCHEMA - 1}, this reads schema {COMPARISON_SCHEMA}"):
        read_comparisons([old])
