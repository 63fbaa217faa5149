"""`genvi demo` runs end to end and writes its three outputs."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np

from genvi.cli import main


def test_demo_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--max-epochs", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Per-condition quality" in printed
    synthetic = ad.read_h5ad(out / "synthetic.h5ad")
    metrics = json.loads((out / "metrics.json").read_text())
    png = (out / "umap_real_vs_generated.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # as many generated cells as held-out real cells, every condition represented
    assert synthetic.n_obs == metrics["n_test"]
    assert synthetic.obs["cell_type"].nunique() == 10
    assert np.all(synthetic.X.data == np.round(synthetic.X.data))
    summary = metrics["summary"]
    assert summary["n_conditions"] + summary["n_skipped"] == 10
    assert summary["n_conditions"] >= 4  # conditions with >= 10 held-out cells are scored
    assert np.isfinite(summary["energy"])


def test_demo_reports_a_bad_condition_key(tmp_path, capsys):
    code = main(["demo", "--condition-key", "tissue", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "tissue" in capsys.readouterr().err
