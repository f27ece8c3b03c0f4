"""Finds or builds the CUDA kernels, once, the first time a CUDA tensor needs them.

Order: an ahead-of-time build (``PANTHER_BUILD_CUDA=1 pip install -e . --no-build-isolation``
makes ``panther.ops._C_sketch``), else a JIT build with :func:`torch.utils.cpp_extension.load`
cached on disk across processes. Any failure is reported by a single warning and the PyTorch path
is used from then on.

The kernels are opt-in, ``PANTHER_CUDA_KERNELS=1``, until ``bench/gpu_check.sh`` has validated them
on real hardware (until then tests/cuda_emulation runs them on the CPU); without it CUDA tensors take
the PyTorch (cuBLAS) path and nothing is built.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

EXTENSION_NAME = "panther_sketch_cuda"
SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
_lock = threading.Lock()
_module: ModuleType | None = None
_failed = False


def cuda_sources() -> list[str]:
    """The binding and kernel sources, binding first (what both JIT and AOT builds compile)."""
    return [str(SOURCE_DIR / "sketch_binding.cpp"), *sorted(str(p) for p in SOURCE_DIR.glob("*.cu"))]


def cache_dir() -> Path:
    """Persistent build folder, keyed by torch/CUDA version so different installs never share objects."""
    root = os.environ.get("PANTHER_EXTENSIONS_DIR")
    if root is None:
        torch_root = os.environ.get("TORCH_EXTENSIONS_DIR")
        root = os.path.join(torch_root, "panther") if torch_root else os.path.join(
            os.path.expanduser("~"), ".cache", "panther", "torch_extensions")
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"torch{torch.__version__}-cu{torch.version.cuda}")
    return Path(root) / tag


def jit_build() -> ModuleType:
    """Compile (or reuse the cached build of) the extension for the visible GPUs."""
    from torch.utils.cpp_extension import load

    build_dir = cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(name=EXTENSION_NAME, sources=cuda_sources(), build_directory=str(build_dir),
                extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-std=c++17"],
                extra_include_paths=[str(SOURCE_DIR)], verbose=os.environ.get("PANTHER_VERBOSE_BUILD") == "1")


def _load() -> ModuleType:
    try:
        from panther.ops import _C_sketch  # type: ignore[attr-defined]  # ahead-of-time build
        return _C_sketch
    except ImportError:
        return jit_build()


def kernels_enabled() -> bool:
    """Whether the user opted in to the fused CUDA kernels (``PANTHER_CUDA_KERNELS=1``)."""
    return os.environ.get("PANTHER_CUDA_KERNELS") == "1"


def cuda_extension() -> ModuleType | None:
    """The compiled kernels, or ``None`` when they are disabled or could not be built (warned once)."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    if not kernels_enabled():
        return None
    with _lock:
        if _module is None and not _failed:
            try:
                _module = _load()
            except Exception as exc:  # noqa: BLE001 - any build/import error means "use PyTorch"
                _failed = True
                warnings.warn(f"panther: could not build the CUDA sketched-linear kernels ({type(exc).__name__}: "
                              f"{exc}); using the PyTorch implementation instead.", RuntimeWarning, stacklevel=3)
    return _module
