"""Writing generated cells to an ``.h5ad`` file chunk by chunk (flat memory)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import anndata
import h5py
import numpy as np
import pandas as pd
from anndata.io import sparse_dataset, write_elem
from scipy import sparse

from genvi.model.base._io import atomic_write

# cells gathered before one append to the on-disk CSR matrix (fewer, larger HDF5 writes)
WRITE_CHUNK_CELLS = 16_384


def write_h5ad_stream(
    path: str | os.PathLike,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict,
    chunks: Iterable[tuple[sparse.csr_matrix, np.ndarray]],
    latent_key: str = "X_genvi_latent",
) -> str:
    """Write an AnnData whose ``X`` and latents arrive in row chunks, without holding them.

    ``obs``, ``var`` and ``uns`` are written first; each ``(x, z)`` chunk of CSR counts
    and latents is appended to a CSR ``X`` (anndata's on-disk sparse ``append``) and written
    into ``obsm[latent_key]``. Memory stays at one write chunk (about
    :data:`WRITE_CHUNK_CELLS` cells) plus ``obs``. The file is written under a temporary
    name and renamed when complete, so a crash never leaves a half-written ``path``.

    Returns
    -------
    The path written.
    """
    path = os.fspath(path)
    n_obs = len(obs)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            write_elem(f, "obs", obs)
            write_elem(f, "var", var)
            write_elem(f, "uns", uns)
            for key in ("varm", "obsp", "varp", "layers"):
                write_elem(f, key, {})
            obsm = f.create_group("obsm")
            obsm.attrs["encoding-type"] = "dict"
            obsm.attrs["encoding-version"] = "0.1.0"
            X = latent = None
            row = 0
            buf_x: list[sparse.csr_matrix] = []
            buf_z: list[np.ndarray] = []
            buffered = 0

            def flush() -> None:
                nonlocal X, latent, row, buffered
                if not buf_x:
                    return
                block = sparse.vstack(buf_x, format="csr", dtype=np.float32)
                if X is None:
                    write_elem(f, "X", block)
                    X = sparse_dataset(f["X"])
                else:
                    X.append(block)
                zs = np.concatenate(buf_z).astype(np.float32)
                if latent is None:
                    latent = obsm.create_dataset(
                        latent_key,
                        shape=(n_obs, zs.shape[1]),
                        dtype="float32",
                        chunks=(min(n_obs, 8192), max(zs.shape[1], 1)),
                    )
                    latent.attrs["encoding-type"] = "array"
                    latent.attrs["encoding-version"] = "0.2.0"
                latent[row : row + len(zs)] = zs
                row += len(zs)
                buf_x.clear()
                buf_z.clear()
                buffered = 0

            for x, z in chunks:
                buf_x.append(x)
                buf_z.append(np.asarray(z))
                buffered += len(z)
                if buffered >= WRITE_CHUNK_CELLS:
                    flush()
            flush()
            if row != n_obs:
                raise RuntimeError(f"wrote {row} cells, expected {n_obs}")

    atomic_write(path, write)
    return path


def read_backed(path: str | os.PathLike) -> anndata.AnnData:
    """Open a written cohort read-only, backed (``X`` stays on disk)."""
    return anndata.read_h5ad(os.fspath(path), backed="r")
