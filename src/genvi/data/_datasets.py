"""Locating the real count datasets used by tutorials and benchmarks (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad

DATASETS = {
    "pbmc3k": "pbmc3k_labeled.h5ad",
    "kang_ifnb": "kang_ifnb_muscat_subset.h5ad",
    "kang_ifnb_2k": "kang_ifnb_harmony_2k.h5ad",
    "kang_ctrl_8donors": "kang_ctrl_8donors.h5ad",
    "cellbench": "cellbench_lung_celllines.h5ad",
    "chen2017": "chen2017_hypothalamus_astrocytes_fasting.h5ad",
    "pbmc_citeseq_tiny": "pbmc_citeseq_2batch_tiny.h5ad",
}


def data_dirs() -> list[Path]:
    """Folders searched, in order.

    ``$GENVI_DATA_DIR``, then ``~/.cache/genvi``, then ``shared/data`` beside the working
    directory or beside one of its parents (up to three levels: a notebook in
    ``checkout/docs/tutorials`` finds ``../shared/data`` of the checkout).
    """
    dirs = []
    if os.environ.get("GENVI_DATA_DIR"):
        dirs.append(Path(os.environ["GENVI_DATA_DIR"]).expanduser())
    dirs.append(Path.home() / ".cache" / "genvi")
    here = Path.cwd()
    dirs.extend(parent / "shared" / "data" for parent in [here, *here.parents][1:5])
    return dirs


def dataset_path(name: str) -> Path | None:
    """Path of a dataset file if it is in one of :func:`data_dirs`, else ``None``."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    for folder in data_dirs():
        path = folder / DATASETS[name]
        if path.is_file():
            return path.resolve()
    return None


def load_dataset(name: str) -> ad.AnnData:
    """Read one of the real count datasets (raw integer counts in ``X``) from a local folder.

    Parameters
    ----------
    name
        One of ``pbmc3k``, ``kang_ifnb`` (Kang et al. 2018 IFN-beta, 1,556 cells, control /
        stimulated x 5 cell types), ``kang_ifnb_2k``, ``kang_ctrl_8donors``, ``cellbench``,
        ``chen2017``, ``pbmc_citeseq_tiny``.

    Returns
    -------
    The AnnData, read into memory.

    Raises
    ------
    FileNotFoundError
        The file is in none of the searched folders; the message lists them. Put the file in
        one of them (or point ``GENVI_DATA_DIR`` at its folder).
    """
    path = dataset_path(name)
    if path is None:
        tried = ", ".join(str(d) for d in data_dirs())
        raise FileNotFoundError(
            f"Dataset {name!r} ({DATASETS[name]}) not found; looked in: {tried}. Copy the file "
            "into one of these folders or set GENVI_DATA_DIR to the folder that holds it."
        )
    return ad.read_h5ad(path)
