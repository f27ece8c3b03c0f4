"""Builds the CUDA kernel sources as host C++ against the emulation shim (``shim/cuda_emu.h``).

The ``.cu``/``.cuh`` files are copied with three rewrites that the shim cannot do with macros:
``__CUDA_ARCH__`` is defined (the architecture the "device code" is compiled for), ``K<<<g, b>>>(a)``
becomes ``::cuda_emu::launch(K, g, b)(a)``, and each ``__shared__`` array becomes a function-local
static that registers itself for the NaN fill. A mutation (a planted bug) can be applied first.
Builds are cached under a folder keyed by a hash of every input, so reruns cost nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim"
CSRC = HERE.parents[1] / "panther" / "ops" / "csrc"

SANITIZERS: dict[str, list[str]] = {
    "plain": ["-O2"],
    "asan": ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
    "tsan": ["-O1", "-fsanitize=thread"],
}

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>]*>)?)\s*<<<")
_LAUNCH_ARGS = re.compile(r">>>\s*\(")
_SHARED = re.compile(r"__shared__\s+(?:__align__\((\d+)\)\s+)?([\w:<>, ]+?)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;")

# (file name, exact text, replacement): a source edit applied before the rewrite.
Mutation = tuple[str, str, str]


@dataclass(frozen=True)
class Build:
    """One emulated build: the compiled-for architecture, sanitizer set and optional planted bug."""

    arch: int = 900
    sanitizer: str = "plain"
    mutation: Mutation | None = None


def compiler() -> str | None:
    """The C++ compiler to use (``$CXX`` or g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def python_headers() -> Path:
    """Python.h of this interpreter (the binding build needs it)."""
    return Path(sysconfig.get_paths()["include"]) / "Python.h"


def rewrite(text: str, arch: int, name: str) -> str:
    """The emulation rewrite of one ``.cu``/``.cuh`` file called name (see the module docstring)."""
    def shared(match: re.Match[str]) -> str:
        align, type_, name, dims = match.groups()
        prefix = f"alignas({align}) " if align else ""
        return (f"{prefix}static {type_} {name}{dims}; "
                f"static const ::cuda_emu::SharedRegion {name}_emu_region({name}, sizeof({name}));")

    out = _SHARED.sub(shared, text)
    out = _LAUNCH_ARGS.sub(")(", _LAUNCH.sub(r"::cuda_emu::launch(\1, ", out))
    for token in ("__shared__", "<<<", ">>>", "__align__"):
        if token in out:
            raise ValueError(f"emulation rewrite left {token!r} behind")
    return f'#define __CUDA_ARCH__ {arch}\n#line 1 "{name}"\n{out}'


def prepare_sources(dest: Path, arch: int, mutation: Mutation | None) -> list[Path]:
    """Copy the kernel sources to dest, mutated then rewritten; returns the translation units."""
    dest.mkdir(parents=True, exist_ok=True)
    units = []
    for src in sorted(CSRC.iterdir()):
        text = src.read_text()
        if mutation is not None and src.name == mutation[0]:
            if text.count(mutation[1]) != 1:
                raise ValueError(f"mutation target not found exactly once in {src.name}: {mutation[1]!r}")
            text = text.replace(mutation[1], mutation[2])
        if src.suffix in (".cu", ".cuh"):
            text = rewrite(text, arch, src.name)
        name = src.name + ".cpp" if src.suffix == ".cu" else src.name
        (dest / name).write_text(text)
        if src.suffix == ".cu":
            units.append(dest / name)
    return units


def _digest(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    for folder in (CSRC, SHIM):
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                h.update(path.name.encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_root() -> Path:
    """Cache folder for builds (``$PANTHER_EMU_BUILD_DIR`` or the system temp folder)."""
    return Path(os.environ.get("PANTHER_EMU_BUILD_DIR", Path(tempfile.gettempdir()) / "panther_cuda_emulation"))


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emulated build failed:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def _cached(folder: Path, product: str, build: Callable[[Path], None]) -> Path:
    """folder/product, built by build(scratch) in a scratch folder that then becomes folder.

    The rename is atomic, so an interrupted build leaves nothing behind and concurrent test runs
    (which may build the same inputs at once) each end up with one complete folder.
    """
    if (folder / product).exists():
        return folder / product
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        build(scratch)
        os.replace(scratch, folder)
    except OSError:
        if not (folder / product).exists():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder / product


def build_kernel_check(build: Build) -> Path:
    """The ``kernel_check`` executable for this build (compiled once per input hash)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler")
    flags = ["-std=c++17", "-pthread", "-g1", "-Wall", "-Wno-unknown-pragmas", *SANITIZERS[build.sanitizer]]
    key = _digest([cxx, *flags, str(build), (HERE / "kernel_check.cpp").read_text()])

    def compile_into(folder: Path) -> None:
        units = prepare_sources(folder / "src", build.arch, build.mutation)
        _compile([cxx, *flags, f"-I{SHIM}", f"-I{folder / 'src'}", str(HERE / "kernel_check.cpp"),
                  str(SHIM / "cuda_emu.cpp"), *map(str, units), "-o", str(folder / "kernel_check")])

    return _cached(build_root() / f"check-{build.sanitizer}-{build.arch}-{key}", "kernel_check", compile_into)


def build_binding(arch: int = 900) -> Path:
    """The real ``sketch_binding.cpp`` linked with the emulated kernels against the installed (CPU) torch.

    Returns the path of the Python extension module ``panther_sketch_emulated``.
    """
    import torch
    from torch.utils import cpp_extension

    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler")
    name = "panther_sketch_emulated"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-std=c++17", "-pthread", "-O1", "-g0", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas",
             f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DPANTHER_CUDA_EMULATION", f"-DTORCH_EXTENSION_NAME={name}",
             "-DTORCH_API_INCLUDE_EXTENSION_H"]
    key = _digest([cxx, *flags, torch.__version__, sys.version, str(arch)])
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    lib_dir = Path(torch.__file__).resolve().parent / "lib"
    libs = [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]

    def compile_into(folder: Path) -> None:
        units = prepare_sources(folder / "src", arch, None)
        includes = [f"-I{SHIM}", f"-I{folder / 'src'}", *(f"-isystem{p}" for p in cpp_extension.include_paths()),
                    f"-isystem{python_headers().parent}"]
        _compile([cxx, *flags, *includes, str(folder / "src" / "sketch_binding.cpp"), str(SHIM / "cuda_emu.cpp"),
                  *map(str, units), *libs, "-o", str(folder / f"{name}{suffix}")])

    return _cached(build_root() / f"binding-{arch}-{key}", f"{name}{suffix}", compile_into)
