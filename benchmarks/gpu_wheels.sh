#!/usr/bin/env bash
# Wheels for benchmarks/gpu_device.sh: what the GPU machine's image (Python 3.12, torch,
# lightning, jax, numpy, scipy, pandas, h5py... but no scverse package) lacks to import genvi
# with scvi-tools 1.5. That machine reaches no package registry, so the wheels travel with
# the working tree (folder .whl, ignored by git; about 30 MB). Run once, here, before
# device.run(command="bash benchmarks/gpu_device.sh", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
mkdir -p .whl
# versions resolved by `pip install ".[test]" "scvi-tools>=1.5,<1.6"` on Python 3.12, minus the
# packages the image already holds (/work/.library/device/KINDS.md, 2026-11-17)
PKGS=(
  anndata==0.13.4 annotated-types==0.8.0 array-api-compat==1.16.0 docrep==0.3.2
  donfig==0.8.1.post1 fast-array-utils==1.5.1 google-crc32c==1.9.0 legacy-api-wrap==1.5
  ml_collections==1.1.0 msgspec==0.23.0 mudata==0.4.1 natsort==8.4.0 numcodecs==0.17.1
  pydantic==2.14.4 pydantic-settings==2.16.3 pydantic_core==2.50.5 pynndescent==0.7.0
  pyro-api==0.1.2 pyro-ppl==1.9.2 python-dotenv==1.2.4 scanpy==1.12.4 scikit-misc==0.5.3
  scverse-misc==0.1.7 scvi-tools==1.5.1 session-info2==0.4.2 sparse==0.19.3
  typing-inspection==0.4.5 tzdata==2026.6 umap-learn==0.5.12 zarr==3.4.2
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
for pkg in "${PKGS[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]}" -d .whl "$pkg" 2>/dev/null; then
    # source-only releases (docrep) are pure Python: build their wheel here
    python3 -m pip wheel -q --no-deps -w .whl "$pkg"
  fi
done
ls .whl | wc -l
du -sh .whl
