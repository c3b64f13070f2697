#!/usr/bin/env bash
# The GPU record (REPORT-<gpu>.md), on a machine the device tool lends: its image has a CUDA torch, Triton and
# nvcc but no network and no grace_fast dependencies beyond those. Builds the extension with its CUDA kernels,
# runs the op tests on the GPU, runs `python -m benchmarks ARGS` (default --all) and packs benchmarks/results/
# into $OUT/results.tgz, to be unpacked over benchmarks/results/ here and committed.
#
# POT (a baseline) and flash-sinkhorn are not in the image: download their wheels here first, into .whl/
# (ignored by git; see the device tool's README for the pip download flags for its Python 3.12), and carry it:
#   run(command="bash benchmarks/gpu.sh --op sinkhorn cost", carry=[".whl"])
# One call runs at most 10 minutes: split --all into several --op calls while the machine is warm (the build
# is kept between calls).
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

start=$SECONDS
GRACE_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace >/dev/null
echo "gpu.sh: extension built in $((SECONDS - start)) s"
python3 -c "import grace_fast; b = grace_fast.backends(); print(b); assert b['cuda'] and b['triton'], b"

# the ops on the GPU: the cuda and triton cases that the CPU machines skip or interpret
python3 -m pytest -q -x -p no:cacheprovider tests/ops

python3 -m benchmarks "${@:---all}"
if [[ -n ${OUT:-} ]]; then
  tar czf "$OUT/results.tgz" -C benchmarks results
fi
