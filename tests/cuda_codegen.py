"""Compiles the CUDA kernels (csrc/cuda/*.cu) with the machine's nvcc for sm_80 and sm_90, no
GPU and no CUDA torch needed (the kernels include no torch header), and reports per kernel what
the compiler says and the PTX shows: registers, stack frame and spills (ptxas -v), 16-byte or
8-byte loads and stores, IEEE divisions (div.rn) against approximate ones, round-to-nearest-even
conversions (cvt.rni), floors (cvt.rmi: the soft-round backward's). The flags are setup.py's,
with torch's own nvcc flags and C++ standard; the toolkit is the one setup.py finds.

    python tests/cuda_codegen.py                 # a JSON list, one object per (sm, kernel)
    python tests/cuda_codegen.py --markdown F    # also a Markdown table (benchmarks/results/)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = (80, 90)


@functools.cache
def _setup():
    """setup.py as a module: its NVCC_FLAGS and toolchain loader (setup() runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("lsq_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toolkit():
    """The CUDA toolkit setup.py would build with, found the same way (through nvcc wrappers),
    for any CUDA release: the kernels include no torch header. Raises ToolkitError, which says
    what is missing."""
    return _setup().load_toolchain().find_cuda_toolkit(None)


def toolkit_error() -> type[Exception]:
    return _setup().load_toolchain().ToolkitError


def nvcc() -> str:
    return str(toolkit().nvcc)


def cuda_include() -> Path:
    """The CUDA headers of that toolkit (cuda_runtime_api.h and the rest)."""
    return toolkit().include


def torch_cxx_standard() -> int:
    """The standard torch builds extensions with, and so setup.py's build (17 or 20)."""
    import torch

    return _setup().load_toolchain().cxx_standard(Path(torch.__file__).parent)


def nvcc_flags(std: int | None = None) -> list[str]:
    """setup.py's NVCC_FLAGS after torch's COMMON_NVCC_FLAGS and torch's -std (or `std`), as
    BuildExtension passes them."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    std = std or torch_cxx_standard()
    return list(COMMON_NVCC_FLAGS) + list(_setup().NVCC_FLAGS) + [f"-std=c++{std}", "-I", str(ROOT / "csrc")]


def demangle(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    short = []
    for line in out.splitlines():
        line = re.sub(r"lsq_fast::cuda::\(anonymous namespace\)::", "", line)
        short.append(line.split("(")[0].removeprefix("void "))
    return short


def ptxas_report(stderr: str) -> dict[tuple[int, str], dict]:
    """ptxas -v lines -> {(sm, mangled kernel): {registers, stack_frame, spill_stores, spill_loads}}."""
    found, current = {}, None
    for line in stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)'", line):
            current = (int(m.group(2)), m.group(1))
            found[current] = {}
        elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            found[current].update(stack_frame=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            found[current]["registers"] = int(m.group(1))
    return found


def ptx_counts(ptx: str) -> dict[str, dict]:
    """Per .entry of a PTX file: memory access widths and the arithmetic that sets the bits."""
    counts = {}
    for m in re.finditer(r"\.entry (\S+)\((.*?)\n}\n", ptx, re.S):
        body = m.group(2)
        counts[m.group(1)] = dict(
            wide_loads=len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]\.", body)),
            wide_stores=len(re.findall(r"st\.global(?:\.\w+)*\.v[24]\.", body)),
            ieee_divides=len(re.findall(r"div\.rn\.f(?:32|64)", body)),
            approximate_divides=len(re.findall(r"div\.(?:approx|full)\.", body)),
            nearest_even_rounds=len(re.findall(r"cvt\.rni\.f(?:32|64)\.f(?:32|64)", body)),
            floors=len(re.findall(r"cvt\.rmi\.f(?:32|64)\.f(?:32|64)", body)),
        )
    return counts


def compile_all() -> list[dict]:
    compiler = nvcc()
    flags = nvcc_flags()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            gencode = [f"-gencode=arch=compute_{sm},code=sm_{sm}" for sm in ARCHS]
            done = subprocess.run([compiler, *flags, *gencode, "-Xptxas", "-v", "-c", str(source), "-o",
                                   os.path.join(tmp, "k.o")], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source.name}:\n{done.stderr[-4000:]}")
            report = ptxas_report(done.stderr)
            ptx = {}
            for sm in ARCHS:
                out = os.path.join(tmp, f"k{sm}.ptx")
                subprocess.run([compiler, *flags, f"-arch=compute_{sm}", "-ptx", str(source), "-o", out],
                               check=True, capture_output=True, text=True)
                ptx[sm] = ptx_counts(Path(out).read_text())
            names = sorted({name for _, name in report})
            readable = dict(zip(names, demangle(names)))
            for (sm, name), info in sorted(report.items(), key=lambda kv: (kv[0][0], readable[kv[0][1]])):
                rows.append(dict(sm=sm, source=source.name, kernel=readable[name], **info, **ptx[sm].get(name, {})))
    return rows


COLUMNS = ["sm", "kernel", "registers", "stack_frame", "spill_stores", "spill_loads", "wide_loads", "wide_stores",
           "ieee_divides", "approximate_divides", "nearest_even_rounds", "floors"]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    rows = compile_all()
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
