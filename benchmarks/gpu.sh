#!/usr/bin/env bash
# The GPU record (REPORT-<gpu>.md), on a machine the device tool lends: its image has a CUDA torch (2.11 when last
# read, not the 2.13 of the CPU machines), Triton (3.6), nvcc, setuptools and ninja, but no network and none of
# grace_fast's other dependencies. Installs grace_fast in place with its CUDA kernels (editable, so that
# the build stays in the source tree), runs the op tests on the GPU, runs `python -m benchmarks ARGS` (default
# --all), and leaves benchmarks/results/ packed in $OUT/results.tgz and its logs in $OUT, also when a step fails;
# results.tgz is unpacked into benchmarks/ here and committed.
#
# POT (a baseline and a test reference) and flash-sinkhorn are not in the image: download their wheels here first,
# into .whl/ (ignored by git; the device tool's README gives the pip download flags for its Python 3.12), and
# carry it:
#   run(command="bash benchmarks/gpu.sh --op sinkhorn cost_matrix", carry=[".whl"])
# One call runs at most 10 minutes: split --all into several --op calls while the machine is warm (the build is
# kept between calls).
set -euo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
pack() {
  if [[ -n ${OUT:-} ]]; then
    tar czf "$OUT/results.tgz" -C benchmarks results
    cp "$logs"/*.log "$OUT"/ 2>/dev/null || true
  fi
}
trap pack EXIT

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

start=$SECONDS
GRACE_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
  python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . >"$logs/build.log" 2>&1 ||
  { tail -n 40 "$logs/build.log"; exit 1; }
echo "gpu.sh: grace_fast installed with its CUDA kernels in $((SECONDS - start)) s"
python3 -c "import grace_fast; b = grace_fast.backends(); print(b); assert b['cuda'] and b['triton'], b"

# the ops on the GPU: the cuda and triton cases that the CPU machines skip or interpret
python3 -m pytest -q -x -p no:cacheprovider tests/ops 2>&1 | tee "$logs/tests-gpu.log"

python3 -m benchmarks "${@:---all}" 2>&1 | tee "$logs/benchmarks-gpu.log"
