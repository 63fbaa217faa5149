"""`genvi demo` runs end to end, reports what it measured, and fails loudly when it should."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import genvi
from genvi import cli
from genvi.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return main(["demo", "--max-epochs", "3", "--out", str(out), "--no-progress"]), out


def test_demo_writes_outputs(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    synthetic = ad.read_h5ad(out / "synthetic.h5ad")
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("umap_real_vs_generated.png", "mean_var_scatter.png", "calibration_curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # as many generated cells as held-out real cells, every condition represented
    assert synthetic.n_obs == metrics["n_test"]
    assert synthetic.obs["cell_type"].nunique() == 10
    assert np.all(synthetic.X.data == np.round(synthetic.X.data))
    summary = metrics["summary"]
    assert isinstance(summary["n_conditions"], int) and isinstance(summary["memorised"], bool)
    assert summary["n_conditions"] + summary["n_skipped"] == 10
    assert summary["n_conditions"] >= 4  # conditions with >= 10 held-out cells are scored
    assert np.isfinite(summary["energy"])
    # every skipped condition is named with its reason
    assert len(metrics["skipped_conditions"]) == summary["n_skipped"]
    assert all("min_cells" in reason for reason in metrics["skipped_conditions"].values())
    # a verdict per metric with the numbers behind it, and every top-level field described
    energy = metrics["verdicts"]["energy"]
    assert energy["verdict"].startswith(("good", "borderline", "poor", "n/a", "uninformative"))
    assert set(energy) >= {"model", "floor", "baseline", "normalised_score", "meaning"}
    assert set(metrics) - {"fields"} <= set(metrics["fields"])
    assert metrics["n_genes"] == 765 and "all 765 genes" in metrics["gene_selection"]
    assert metrics["decode_conditions"] is False
    assert "765 genes" in metrics["reference_space"]
    levels = metrics["calibration"]["verdicts"]
    assert set(levels) == {"0.5", "0.8", "0.9", "0.95"}
    # membership inference next to the DCR, in the file and the printed report
    mia = metrics["privacy"]["membership_inference"]
    assert 0.0 <= mia["auroc"] <= 1.0 and mia["risk"] in ("none detected", "low", "high")


@pytest.mark.slow
def test_demo_on_many_genes_trains_on_highly_variable_genes(tmp_path, capsys):
    """A file with more genes than --n-top-genes trains on HVGs and says so (not 'hung')."""
    adata = genvi.data.simulate(n_cells=300, n_genes=120, n_cell_types=3, seed=4)
    adata.obs["condition"] = adata.obs["cell_type"]  # a key named like the table's columns
    path = tmp_path / "many_genes.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "out"
    args = ["demo", "--adata", str(path), "--condition-key", "condition", "--out", str(out)]
    code = main([*args, "--n-top-genes", "50", "--max-epochs", "2", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "x 50 genes (50 highly variable of 120 genes" in captured.err
    assert "first epoch took" in captured.err
    assert "membership inference: best attack" in captured.err
    # stdout holds only the JSON list of files; the report went to stderr
    files = json.loads(captured.out)["files"]
    assert str(out / "metrics.json") in files
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_genes"] == 50
    assert ad.read_h5ad(out / "synthetic.h5ad").n_vars == 50


def test_demo_reports_a_bad_condition_key(tmp_path, capsys):
    code = main(["demo", "--condition-key", "tissue", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "tissue" in capsys.readouterr().err


@pytest.mark.parametrize("error", [KeyboardInterrupt, lambda: SystemExit(1)])
def test_interrupted_demo_exits_non_zero(tmp_path, monkeypatch, capsys, error):
    """Ctrl-C during training (Lightning turns it into SystemExit(1)) must not exit 0."""

    def interrupted(self, *args, **kwargs):
        raise error()

    monkeypatch.setattr(genvi.model.PriorVI, "train", interrupted)
    code = main(["demo", "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == cli.EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "x" / "metrics.json").exists()


@pytest.mark.parametrize("flag", [[], ["--decode-conditions"]])
def test_demo_builds_the_decoder_it_is_asked_for(tmp_path, monkeypatch, flag):
    """``--decode-conditions`` gives PriorVI's decoder the conditions; without it, z only."""
    seen = {}

    def stop(self, *args, **kwargs):
        seen["decodes"] = self.module.decode_conditions
        raise KeyboardInterrupt

    monkeypatch.setattr(genvi.model.PriorVI, "train", stop)
    main(["demo", *flag, "--out", str(tmp_path / "x"), "--no-progress"])
    assert seen["decodes"] is bool(flag)


def test_help_is_fast_and_lists_every_prior():
    """`genvi --help` must not import torch; the --prior choices are the registry's."""
    code = "import sys, genvi.cli; genvi.cli._parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert list(cli.PRIOR_CHOICES) == genvi.nn.PRIORS.names
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
