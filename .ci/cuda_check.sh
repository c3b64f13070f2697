#!/usr/bin/env bash
# Proves on a machine without a GPU that the CUDA sources compile, link and import: builds grace_fast._C with
# GRACE_FAST_CUDA=1 against a CUDA build of torch in its own venv, in a copy of the tree (the main tree keeps
# its CPU build), and checks that the CPU and CUDA kernels of cost_matrix are registered.
#   CUDA_VENV   the venv to use or create (default .venv-cuda); reused when it already has torch 2.14.1
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.14.1
CUDA_VENV=${CUDA_VENV:-$PWD/.venv-cuda}
py=$CUDA_VENV/bin/python

has_torch() {
  [[ -x $py ]] && "$py" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
    2>/dev/null
}
if ! has_torch; then
  # A CI run failed with a full disk in pip; say what is needed before pip does.
  need_mb=5120
  mkdir -p "$(dirname "$CUDA_VENV")"
  free_mb() { df -Pm "$(dirname "$CUDA_VENV")" | awk 'NR == 2 {print $4}'; }
  if (($(free_mb) < need_mb)); then
    echo "cuda_check: the CUDA torch venv needs $need_mb MB free under $(dirname "$CUDA_VENV"), $(free_mb) MB are" >&2
    exit 1
  fi
  python3 -m venv "$CUDA_VENV"
  # torch and its requirements (markers evaluated) but Triton: 0.9 GB that a compile check never loads
  export PIP_NO_CACHE_DIR=1  # no second copy of the wheels in ~/.cache
  "$py" -m pip install -q --no-deps "torch==$TORCH_VERSION"
  mapfile -t deps < <("$py" - <<'PY'
import importlib.metadata

from pip._vendor.packaging.requirements import Requirement

for req in map(Requirement, importlib.metadata.requires("torch")):
    if req.name != "triton" and (req.marker is None or req.marker.evaluate({"extra": ""})):
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        print(f"{req.name}{extras}{req.specifier}")
PY
  )
  ((${#deps[@]})) || { echo "cuda_check: no requirements read from torch $TORCH_VERSION" >&2; exit 1; }
  echo "cuda_check: installing ${deps[*]} ninja (pip will warn that torch requires triton: left out on purpose)"
  "$py" -m pip install -q "${deps[@]}" ninja
  echo "cuda_check: venv $(du -sh "$CUDA_VENV" | cut -f1), $(free_mb) MB left"
fi
"$py" -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'"
export PATH=$CUDA_VENV/bin:$PATH  # torch.utils.cpp_extension runs `ninja` from PATH

# The toolkit root: nvcc may be a wrapper script that execs the real one.
CUDA_HOME=/usr/local/cuda-13.0
if nvcc_path=$(command -v nvcc); then
  nvcc_path=$(readlink -f "$nvcc_path")
  if [[ $(head -c 2 "$nvcc_path") == "#!" ]]; then
    nvcc_path=$(sed -n 's/^[[:space:]]*exec[[:space:]]\{1,\}"\{0,1\}\([^"[:space:]]*nvcc\).*/\1/p' "$nvcc_path" | head -n 1)
  fi
  if [[ -n $nvcc_path && -x $nvcc_path ]]; then
    CUDA_HOME=$(readlink -f "$(dirname "$nvcc_path")/..")
  fi
fi
[[ -x $CUDA_HOME/bin/nvcc ]] || { echo "cuda_check: no nvcc under CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
export CUDA_HOME

# Headers the toolkit lacks (cusparse.h, cublas_v2.h, ...) come with torch's nvidia-* wheels. CPATH ranks after
# the -I flags, so the toolkit's own headers still win; nvcc preprocesses through the host gcc, which reads it.
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
nvidia_includes=$(find "$site/nvidia" -mindepth 2 -maxdepth 3 -type d -name include 2>/dev/null | sort | paste -sd: -)
export CPATH=$nvidia_includes${CPATH:+:$CPATH}
export TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=2 GRACE_FAST_CUDA=1

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
printf '#include <cusparse.h>\n#include <cublas_v2.h>\n' >"$build/probe.cu"
g++ -E -x c++ -I"$CUDA_HOME/include" "$build/probe.cu" -o /dev/null
"$CUDA_HOME/bin/nvcc" -E "$build/probe.cu" -o /dev/null

cp -r setup.py csrc grace_fast "$build/"
find "$build/grace_fast" -name '_C*.so' -delete  # the main tree's CPU build must not stand in for this one
start=$SECONDS
(cd "$build" && "$py" setup.py -q build_ext --inplace)
echo "cuda_check: built in $((SECONDS - start)) s"

# The extension is loaded from its file, without the package's __init__: that imports the model stack
# (transformers), which this venv does not install.
(cd "$build" && "$py" -W ignore - "$build") <<'EOF'
import glob
import importlib.util
import sys

import torch

(path,) = glob.glob(f"{sys.argv[1]}/grace_fast/_C*.so")
spec = importlib.util.spec_from_file_location("grace_fast._C", path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
for op in ("cost_matrix_forward", "cost_matrix_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"grace_fast::{op}", key), f"no {key} kernel for {op}"
print(f"cuda_check: OK, grace_fast._C built against torch {torch.__version__} (CUDA {torch.version.cuda}) "
      "registers the CPU and CUDA kernels of cost_matrix")
EOF
