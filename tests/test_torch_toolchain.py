"""tools/torch_toolchain.py on fake toolkits (shell scripts that answer like nvcc): the toolkit
is found through wrappers, and every way to get it wrong is named, with the fix. Needs no CUDA."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("torch_toolchain_under_test", ROOT / "tools" / "torch_toolchain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


toolchain = _load()


def fake_toolkit(root: Path, release: str = "13.0", headers: bool = True) -> Path:
    """root/bin/nvcc answering --version and -dryrun as nvcc does; root/include/cuda_runtime.h."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"""#!/bin/sh
case "$*" in
  *--version*) echo "Cuda compilation tools, release {release}, V{release}.1" ;;
  *-dryrun*) echo "#$ TOP={root}/bin/.." >&2; echo '#$ INCLUDES="-I{root}/bin/../include"  ' >&2 ;;
esac
""")
    nvcc.chmod(0o755)
    if headers:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("")
    return root


def wrapper(folder: Path, target: Path) -> Path:
    """folder/nvcc: a two-line script that execs the real one, as /usr/local/bin/nvcc is here."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvcc"
    script.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    script.chmod(0o755)
    return script


def test_nvcc_wrapper_on_path_leads_to_the_real_toolkit(tmp_path):
    kit = fake_toolkit(tmp_path / "cuda-13.0")
    bin_dir = wrapper(tmp_path / "local" / "bin", kit / "bin" / "nvcc").parent
    found = toolchain.find_cuda_toolkit("13.0", env={"PATH": str(bin_dir)})
    assert found.home == kit.resolve() and found.version == (13, 0)
    assert found.include == (kit / "include").resolve()
    assert "nvcc on PATH" in found.found_by


def test_a_link_to_nvcc_also_leads_to_the_toolkit(tmp_path):
    kit = fake_toolkit(tmp_path / "cuda")
    (tmp_path / "bin").mkdir()
    os.symlink(kit / "bin" / "nvcc", tmp_path / "bin" / "nvcc")
    assert toolchain.find_cuda_toolkit("13.0", env={"PATH": str(tmp_path / "bin")}).home == kit.resolve()


def test_cuda_home_wins_and_must_be_right(tmp_path):
    kit = fake_toolkit(tmp_path / "kit")
    assert toolchain.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(kit), "PATH": ""}).found_by == "CUDA_HOME"
    with pytest.raises(toolchain.ToolkitError, match=r"no bin/nvcc.*LSQ_FAST_NO_CUDA=1"):
        toolchain.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(tmp_path / "nothing"), "PATH": ""})


def test_cuda_home_at_a_wrapper_folder_names_the_real_toolkit(tmp_path):
    """CUDA_HOME=/usr/local where /usr/local/bin/nvcc is a wrapper: torch's own guess on these
    machines, which fails late at cuda_runtime.h."""
    kit = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper(tmp_path / "local" / "bin", kit / "bin" / "nvcc")
    with pytest.raises(toolchain.ToolkitError, match=rf"no include/cuda_runtime.h.*set CUDA_HOME={kit.resolve()}"):
        toolchain.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(tmp_path / "local"), "PATH": ""})


def test_missing_headers_are_named(tmp_path):
    kit = fake_toolkit(tmp_path / "kit", headers=False)
    with pytest.raises(toolchain.ToolkitError, match=r"no include/cuda_runtime.h: its headers are not installed"):
        toolchain.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(kit), "PATH": ""})


def test_a_cuda_major_other_than_torchs_is_refused(tmp_path):
    kit = fake_toolkit(tmp_path / "kit", release="12.4")
    with pytest.raises(toolchain.ToolkitError, match=r"is CUDA 12.4, but torch was built with CUDA 13.0.*CUDA 13 toolkit"):
        toolchain.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(kit), "PATH": ""})
    # A minor difference loads (CUDA's minor-version compatibility); no torch: any release.
    assert toolchain.find_cuda_toolkit("12.8", env={"CUDA_HOME": str(kit), "PATH": ""}).version == (12, 4)
    assert toolchain.find_cuda_toolkit(None, env={"CUDA_HOME": str(kit), "PATH": ""}).version == (12, 4)


def test_no_toolkit_at_all_says_how_to_proceed(tmp_path, monkeypatch):
    monkeypatch.setattr(toolchain, "DEFAULT_HOME", tmp_path / "no-cuda")
    with pytest.raises(toolchain.ToolkitError, match=r"no CUDA toolkit was found.*CUDA_HOME.*LSQ_FAST_NO_CUDA=1"):
        toolchain.find_cuda_toolkit("13.0", env={"PATH": str(tmp_path)})


def test_cxx_standard_is_read_from_torchs_cmake_config(tmp_path):
    config = tmp_path / "share" / "cmake" / "Torch"
    config.mkdir(parents=True)
    (config / "TorchConfig.cmake").write_text("set_target_properties(torch PROPERTIES\n    CXX_STANDARD 20\n)\n")
    assert toolchain.cxx_standard(tmp_path) == 20
    assert toolchain.cxx_standard(tmp_path / "elsewhere") == 17


def test_cxx_standard_of_the_installed_torch():
    import torch

    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert toolchain.cxx_standard(Path(torch.__file__).parent) == (20 if (major, minor) >= (2, 13) else 17)
