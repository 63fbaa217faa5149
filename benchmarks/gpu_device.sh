#!/usr/bin/env bash
# The GPU check in one command, on a device machine (no network; run gpu_wheels.sh here first):
#   device.run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=600)
# Installs the carried wheels beside the image's torch, runs the `gpu` tests, then
# benchmarks/gpu.py; logs and benchmarks/results/gpu.json come back under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/genvi_gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, scvi, genvi; print(torch.__version__, scvi.__version__, torch.cuda.get_device_name(0))" \
  | tee -a "$OUT/device.txt" || exit 1
timeout 330 python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 240 python3 benchmarks/gpu.py --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, benchmark rc=$bench_rc"
