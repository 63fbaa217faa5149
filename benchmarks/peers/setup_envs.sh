#!/usr/bin/env bash
# Create one virtual environment per peer method of benchmarks/counterfactual.py --peers.
#
#   bash benchmarks/peers/setup_envs.sh                # all of them
#   bash benchmarks/peers/setup_envs.sh cpa biolord    # some of them
#
# The environments go to $GENVI_PEER_ENVS (default benchmarks/peers/.venvs, gitignored), one
# folder per peer; a log of each install is written beside it (<name>.log). Only PyPI is needed.
# Python 3.11 environments take torch 2.13.0 first (on the project machines a CPU wheel on local
# disk; otherwise pip would resolve a CUDA build of several GB). The Python 3.10 ones (CPA needs
# Python < 3.11, scGen 2.1.0 an old scvi-tools) get the torch their pins ask for from PyPI.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENVS="${GENVI_PEER_ENVS:-$HERE/.venvs}"
PY311="${PY311:-python3.11}"
PY310="${PY310:-$(python3.10 -V >/dev/null 2>&1 && echo python3.10 || ls "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 2>/dev/null | tail -1)}"
mkdir -p "$ENVS"

make_env() {  # name python pip-args...
  local name=$1 py=$2
  shift 2
  local dir="$ENVS/$name" log="$ENVS/$name.log"
  echo "[$name] creating $dir with $py (log: $log)"
  rm -rf "$dir"
  "$py" -m venv "$dir" || return 1
  "$dir/bin/python" -m pip install -q --upgrade pip >>"$log" 2>&1
  local step
  for step in "$@"; do
    echo "[$name] pip install $step"
    # shellcheck disable=SC2086
    if ! "$dir/bin/python" -m pip install $step >>"$log" 2>&1; then
      echo "[$name] FAILED: pip install $step (see $log)"
      tail -5 "$log"
      return 1
    fi
  done
  "$dir/bin/python" -m pip freeze >"$ENVS/$name.freeze.txt"
  echo "[$name] ok"
}

want() { local x; for x in "${SELECTED[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
SELECTED=("$@")
[ ${#SELECTED[@]} -eq 0 ] && SELECTED=(biolord cpa scgen scarches celleval cfgen)

# biolord 0.0.3 (Python 3.11, scvi-tools 1.4 beside it)
if want biolord; then
  make_env biolord "$PY311" "torch==2.13.0" "biolord==0.0.3 scvi-tools==1.4.2"
fi
# CPA: cpa-tools 0.8.8 needs Python < 3.11; pins torch 2.0 and scvi-tools 0.20.3; pyarrow<15
if want cpa; then
  make_env cpa "$PY310" "cpa-tools==0.8.8 pyarrow<15"
fi
# scGen 2.1.0 (2022) imports scvi._compat and LossRecorder, both gone from scvi-tools >= 0.20
if want scgen; then
  # scvi-tools 0.16.4's own requirements are open-ended (numpy, anndata, jax, torch...): with
  # today's releases it fails to import (anndata 0.11 has no SparseDataset), so pin its era.
  make_env scgen "$PY310" "scgen==2.1.0 scvi-tools==0.16.4 torch==1.12.1 pytorch-lightning==1.5.10.post0 \
torchmetrics==0.9.3 numpy==1.22.4 scipy==1.8.1 pandas==1.4.3 anndata==0.8.0 scanpy==1.9.1 \
h5py==3.7.0 matplotlib==3.5.3 jax==0.3.14 jaxlib==0.3.14 flax==0.5.2 optax==0.1.3 chex==0.1.3 \
numpyro==0.10.0 pyro-ppl==1.8.1 protobuf==3.20.1 numba==0.56.4 llvmlite==0.39.1 \
umap-learn==0.5.3 pynndescent==0.5.7 seaborn==0.11.2 adjustText==0.7.3"
fi
# trVAE and scGen's port from scArches 0.6.1 (Python 3.11, scvi-tools 1.4). scArches 0.6.1
# imports anndata.read (gone in anndata 0.12), and anndata 0.11 refuses zarr 3. numpy < 2:
# its requirements resolve pandas 1.5.3 (December 2026), whose wheels fail to import under
# numpy 2 ("numpy.dtype size changed").
if want scarches; then
  make_env scarches "$PY311" "torch==2.13.0" "scarches==0.6.1 scvi-tools==1.4.2 anndata<0.12 zarr<3 numpy<2"
fi
# CFGen (theislab/CFGen, not on PyPI) for benchmarks/generation.py --peers cfgen: its source at
# the commit below, cloned from GitHub or copied from a local checkout given as $CFGEN_SRC, and
# installed editable in "compat" mode (its subpackages have no __init__.py, so a regular install
# leaves them out). Not installed from its requirements.txt, which lists wandb, hydra's sweepers
# and jupyter for its training scripts; the modules the runner imports need only what is listed
# here (muon: its data loader imports it). torchdyn without its requirements: they pull
# torchvision and with it a CUDA torch of several GB, and torchdyn.core does not import it.
CFGEN_COMMIT=e347d1a981944e1a66bee3f913e74081d5793c27
if want cfgen; then
  src="$ENVS/cfgen.src"
  rm -rf "$src"
  if [ -n "${CFGEN_SRC:-}" ]; then
    cp -r "$CFGEN_SRC" "$src"
  else
    git clone -q https://github.com/theislab/CFGen "$src" && git -C "$src" checkout -q "$CFGEN_COMMIT"
  fi
  make_env cfgen "$PY311" "torch==2.13.0" \
    "torch==2.13.0 pytorch-lightning==2.5.* torchmetrics scvi-tools==1.4.2 scanpy muon pot omegaconf torchcde torchsde" \
    "--no-deps torchdyn==1.0.6" \
    "--no-deps -e $src --config-settings editable_mode=compat"
fi
# cell-eval (Arc Institute) for the metrics; no torch
if want celleval; then
  make_env celleval "$PY311" "cell-eval==0.8.2"
fi
