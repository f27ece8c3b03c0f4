"""Optional ahead-of-time build of panther's CUDA kernels.

``pip install -e .`` needs no CUDA: metadata lives in pyproject.toml and the kernels are JIT-built
on first use with a CUDA tensor. To compile them now instead (a CUDA-enabled torch must already be
installed, hence no build isolation)::

    PANTHER_BUILD_CUDA=1 pip install -e . --no-build-isolation
"""

import os
from pathlib import Path

from setuptools import setup


def _cuda_extensions():
    if os.environ.get("PANTHER_BUILD_CUDA") != "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    csrc = Path("panther") / "ops" / "csrc"
    sources = [str(csrc / "sketch_binding.cpp"), *sorted(str(p) for p in csrc.glob("*.cu"))]
    extension = CUDAExtension(
        "panther.ops._C_sketch", sources, include_dirs=[str(csrc.resolve())],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-std=c++17"]})
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**_cuda_extensions())
