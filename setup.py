"""Build grace_fast and its optional extension grace_fast._C (C++/OpenMP, CUDA when available).

Environment:
  GRACE_FAST_BUILD_EXT=0   skip the extension (the torch references still work)
  GRACE_FAST_CUDA=1 / =0   force / skip the CUDA sources (default: when torch has CUDA and nvcc is found)
  MAX_JOBS, TORCH_CUDA_ARCH_LIST   as for torch.utils.cpp_extension
"""

import glob
import os

from setuptools import find_packages, setup


def _extensions():
    if os.environ.get("GRACE_FAST_BUILD_EXT", "1") == "0":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cuda_flag = os.environ.get("GRACE_FAST_CUDA")
    if cuda_flag == "1" and (torch.version.cuda is None or cpp_extension.CUDA_HOME is None):
        raise RuntimeError(
            "GRACE_FAST_CUDA=1 but no CUDA build is possible: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}. "
            "Install a CUDA build of torch and set CUDA_HOME to the toolkit root, or use GRACE_FAST_CUDA=0."
        )
    with_cuda = cuda_flag == "1" or (
        cuda_flag is None and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    )
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    extra = {"cxx": ["-O3", "-fopenmp", "-fno-math-errno", "-Wno-psabi"]}
    kind = cpp_extension.CppExtension
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        extra["nvcc"] = ["-O3", "-lineinfo"]  # no --use_fast_math: it flushes subnormals, approximates rsqrt/exp/log
        kind = cpp_extension.CUDAExtension
    ext = kind(
        "grace_fast._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build}


ext_modules, cmdclass = _extensions()

setup(
    name="grace_fast",
    version="0.1.0",
    description="Fast ops and model stack for GRACE dynamic facial expression recognition",
    packages=find_packages(include=["grace_fast", "grace_fast.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.13",
        "numpy",
        "transformers>=5,<6",
        "safetensors",
        "openai>=1",
        "decord>=0.6",
        "av",
        "tqdm",
        "matplotlib",
        "pillow",
        "pyyaml",
    ],
    package_data={"grace_fast.text": ["*.json"]},
    entry_points={"console_scripts": ["grace-fast = grace_fast.cli:main"]},
    extras_require={
        "faces": ["opencv-python-headless>=4.5,<5"],  # Haar cascades in cv2.data (version 5 wheels ship none)
        "tensorboard": ["tensorboard"],
        "test": [
            "pytest>=8",
            "pytest-benchmark>=4",
            "pot==0.9.7",
            "ruff",
            "triton>=3.9,<3.10",
            "opencv-python-headless>=4.5,<5",
            "tensorboard",
        ],
        "gpu-bench": ["flash-sinkhorn>=0.4.1"],  # a baseline of benchmarks/bench_sinkhorn.py on CUDA only
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
