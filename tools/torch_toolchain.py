"""What the installed torch asks of an extension build: its C++ standard, and a CUDA toolkit
that matches its CUDA. Standard library only, so that setup.py, CMake's caller and the tests
can load it before anything is built.

    python tools/torch_toolchain.py     # what a build here would use, or why it cannot

The C++ standard is torch's own: torch 2.11 builds extensions as C++17, 2.13 and later as C++20
(its headers use std::strong_ordering, string_view::starts_with and `requires`). torch states it
in two places that agree, `BuildExtension`'s default flag and the `CXX_STANDARD` that
TorchConfig.cmake sets on its `torch` target; `cxx_standard` reads the latter, for the callers
that do not go through BuildExtension (the codegen test's syntax check of the binding).

The toolkit: torch guesses CUDA_HOME as the parent of the parent of the first `nvcc` on PATH.
Where that nvcc is a wrapper script or a link outside the toolkit (on these machines
/usr/local/bin/nvcc is a two-line script that execs /usr/local/cuda-13.0/bin/nvcc), the guess is
/usr/local, which has no CUDA headers, and the build fails late, at
"cuda_runtime.h: No such file or directory". `find_cuda_toolkit` asks nvcc itself where its
toolkit is (`nvcc -dryrun` prints TOP and INCLUDES, through any wrapper), checks that the
headers are there and that the CUDA major is torch's, and otherwise says what is wrong and how
to proceed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HOW_TO_PROCEED = (
    "Set CUDA_HOME to a {toolkit} toolkit (the folder with bin/nvcc and include/cuda_runtime.h), "
    "or build without the CUDA C++ kernels with LSQ_FAST_NO_CUDA=1 (backend=\"triton\" still runs on the GPU)."
)


DEFAULT_HOME = Path("/usr/local/cuda")  # where CUDA's installers put the toolkit (a link to cuda-X.Y)


class ToolkitError(RuntimeError):
    """No usable CUDA toolkit; the message says what is wrong and how to proceed."""


@dataclass(frozen=True)
class Toolkit:
    home: Path  # what CUDA_HOME must be
    nvcc: Path
    include: Path  # holds cuda_runtime.h
    version: tuple[int, int]  # nvcc's release, e.g. (13, 0)
    found_by: str  # how: "CUDA_HOME", "nvcc on PATH (/usr/local/bin/nvcc)", ...

    def describe(self) -> str:
        return (f"CUDA {self.version[0]}.{self.version[1]} toolkit at {self.home} (found by {self.found_by}; "
                f"nvcc {self.nvcc}, headers {self.include})")


def cxx_standard(torch_dir: str | os.PathLike) -> int:
    """The C++ standard torch builds extensions with (17 or 20), from its TorchConfig.cmake;
    17, the standard of every torch before 2.13, where the file does not say."""
    config = Path(torch_dir) / "share" / "cmake" / "Torch" / "TorchConfig.cmake"
    found = re.search(r"\bCXX_STANDARD\s+(\d+)", config.read_text()) if config.exists() else None
    return int(found.group(1)) if found else 17


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ToolkitError(f"could not run {cmd[0]}: {err}") from None
    return done.stdout + done.stderr


def _nvcc_variables(nvcc: str) -> dict[str, str]:
    """The `#$ NAME=value` lines of a dry run: nvcc's own idea of its toolkit."""
    text = _run([nvcc, "-dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull])
    return dict(re.findall(r"^#\$ (\w+)=(.*)$", text, re.M))


def _nvcc_version(nvcc: Path) -> tuple[int, int]:
    text = _run([str(nvcc), "--version"])
    found = re.search(r"release (\d+)\.(\d+)", text)
    if not found:
        raise ToolkitError(f"{nvcc} --version does not name a CUDA release:\n{text.strip()[-500:]}")
    return int(found.group(1)), int(found.group(2))


def _toolkit_at(home: Path, found_by: str, torch_cuda: str | None) -> Toolkit:
    """The toolkit at `home`, checked as torch will use it: home/bin/nvcc, home/include."""
    proceed = _how_to_proceed(torch_cuda)
    nvcc = home / "bin" / "nvcc"
    if not (nvcc.is_file() and os.access(nvcc, os.X_OK)):
        raise ToolkitError(f"{home} (from {found_by}) is not a CUDA toolkit: it has no bin/nvcc. {proceed}")
    include = home / "include"
    if not (include / "cuda_runtime.h").is_file():
        top = _nvcc_variables(str(nvcc)).get("TOP")
        real = Path(top).resolve() if top else None
        hint = (f" Its nvcc is a wrapper of the toolkit at {real}: set CUDA_HOME={real}."
                if real and real != home and (real / "include" / "cuda_runtime.h").is_file() else "")
        raise ToolkitError(f"the CUDA toolkit at {home} (from {found_by}) has no include/cuda_runtime.h: "
                           f"its headers are not installed, or this is not the toolkit's root.{hint} {proceed}")
    version = _nvcc_version(nvcc)
    if torch_cuda is not None and str(version[0]) != torch_cuda.split(".")[0]:
        raise ToolkitError(f"nvcc at {nvcc} (from {found_by}) is CUDA {version[0]}.{version[1]}, but torch was "
                           f"built with CUDA {torch_cuda}: kernels built by it would not load beside torch's "
                           f"CUDA runtime. {proceed}")
    return Toolkit(home, nvcc, include.resolve(), version, found_by)


def _how_to_proceed(torch_cuda: str | None) -> str:
    major = f"CUDA {torch_cuda.split('.')[0]}" if torch_cuda else "CUDA"
    return HOW_TO_PROCEED.format(toolkit=major)


def find_cuda_toolkit(torch_cuda: str | None, env: dict[str, str] | None = None) -> Toolkit:
    """The toolkit to build with for a torch built with CUDA `torch_cuda` (torch.version.cuda;
    None: any CUDA release, for compiling the torch-free kernels alone).

    In order: CUDA_HOME (or CUDA_PATH) when set, and then it must be right; the toolkit of the
    nvcc on PATH, as nvcc itself reports it (following links and wrapper scripts); /usr/local/cuda.
    Raises ToolkitError, naming the problem and the fix, where none is usable."""
    env = os.environ if env is None else env
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(name):
            return _toolkit_at(Path(env[name]).resolve(), name, torch_cuda)
    on_path = shutil.which("nvcc", path=env.get("PATH"))
    if on_path:
        top = _nvcc_variables(on_path).get("TOP")
        home = Path(top).resolve() if top else Path(on_path).resolve().parent.parent
        return _toolkit_at(home, f"nvcc on PATH ({on_path})", torch_cuda)
    if (DEFAULT_HOME / "bin" / "nvcc").exists():
        return _toolkit_at(DEFAULT_HOME.resolve(), str(DEFAULT_HOME), torch_cuda)
    raise ToolkitError(f"no CUDA toolkit was found: no CUDA_HOME, no nvcc on PATH, no /usr/local/cuda. "
                       f"{_how_to_proceed(torch_cuda)}")


def main() -> int:
    import torch

    print(f"torch {torch.__version__}: extensions are C++{cxx_standard(Path(torch.__file__).parent)}")
    if torch.version.cuda is None:
        print("a CPU build of torch: lsq_fast builds its CPU kernels only")
        return 0
    try:
        print(find_cuda_toolkit(torch.version.cuda).describe())
    except ToolkitError as err:
        print(f"no usable CUDA toolkit: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
