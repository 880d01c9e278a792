"""The set-up layer: pins agree everywhere, the changelog parser, and what `make venv` put in .venv/llama.cpp."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LLAMA_CPP_DIR = ROOT / ".venv" / "llama.cpp"

_REQ = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<op>===|==|>=|<=|~=|!=|<|>)?\s*(?P<ver>[^\s;,#]*)"
)


def _load_script(name: str):
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


setup_llama_cpp = _load_script("setup_llama_cpp")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, tuple[str, str]]:
    """{normalized name: (operator, version)} of requirement lines, skipping options and comments."""
    out = {}
    for line in lines:
        line = str(line).split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = _REQ.match(line)
        assert m, f"unparsable requirement {line!r}"
        out[_norm(m["name"])] = (m["op"] or "", m["ver"])
    return out


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def deps(pyproject) -> dict[str, tuple[str, str]]:
    return _pins(pyproject["project"]["dependencies"])


def test_dependencies_are_exact_pins(pyproject, deps):
    loose = {n: op + v for n, (op, v) in deps.items() if op != "=="}
    assert not loose, f"pyproject.toml dependencies must be pinned with ==: {loose}"
    for extra in ("test", "slurm", "gptq"):
        pins = _pins(pyproject["project"]["optional-dependencies"][extra])
        loose = {n: op + v for n, (op, v) in pins.items() if op != "=="}
        assert not loose, f"extra {extra!r} must be pinned with ==: {loose}"


def test_conda_env_mirrors_pyproject(deps):
    env = yaml.safe_load((ROOT / "envs" / "quantflow.yaml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "envs/quantflow.yaml needs one pip: section"
    conda_pins = _pins(pip_sections[0])
    mismatched = {
        n: (f"pyproject {v}", f"envs/quantflow.yaml {conda_pins.get(n, ('', 'missing'))[1]}")
        for n, (_, v) in deps.items()
        if conda_pins.get(n, ("", None))[1] != v
    }
    assert not mismatched, f"pins differ: {mismatched}"
    py = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\s*[=<>]", d)]
    assert py and "3.11" in py[0], f"envs/quantflow.yaml should pin python 3.11, has {py}"


def test_constraints_pin_the_same_torch(deps):
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    assert "torch" in constraints, "constraints.txt must pin torch"
    assert constraints["torch"] == ("==", deps["torch"][1]), (
        f"constraints.txt torch {constraints['torch']} != pyproject.toml torch {deps['torch']}"
    )


def _make_venv_dry_run(*args: str) -> str:
    """The commands `make venv` would run (-n: none is run; -B: as on a machine with no .venv yet)."""
    p = subprocess.run(["make", "-n", "-B", "venv", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _torch_install(commands: str) -> str:
    return next(line for line in commands.splitlines() if "pip install" in line and "'torch==" in line)


def test_torch_index_url_points_the_torch_install_at_that_index():
    url = "https://wheels.example.org/cpu"
    assert f"--index-url '{url}'" in _torch_install(_make_venv_dry_run(f"TORCH_INDEX_URL={url}"))


def test_without_torch_index_url_pip_uses_its_configured_indexes():
    commands = _make_venv_dry_run()
    assert "--index-url" not in _torch_install(commands)
    assert "scripts/check_torch.py" in commands  # the build is checked, with a warning at most


check_torch = _load_script("check_torch")


@pytest.mark.parametrize(
    "cuda,cuda_available,gpu_visible,warns",
    [
        ("13.0", False, False, "a CUDA build on a machine without a GPU"),  # a stock Linux index, no GPU
        ("13.0", True, True, None),  # a GPU machine keeps its CUDA build
        (None, False, False, None),  # a CPU-only build without a GPU
        (None, False, True, "CPU-only build but this machine has an NVIDIA GPU"),
        ("13.0", False, True, "cannot use the NVIDIA GPU"),
    ],
)
def test_the_torch_build_check_warns_and_never_fails(capsys, cuda, cuda_available, gpu_visible, warns):
    facts = dict(version="2.13.0", cuda=cuda, cuda_available=cuda_available, gpu_visible=gpu_visible)
    assert check_torch.main(facts) == 0
    err = capsys.readouterr().err
    if warns:
        assert err.startswith("WARNING: ") and warns in err and len(err.splitlines()) == 1
        assert "TORCH_INDEX_URL" in err or "driver" in err
    else:
        assert err == ""


def test_the_torch_build_check_runs_on_this_machine():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_torch.py")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


CHANGELOG = """\
# Changelog

## [Unreleased]

- fix: something not released yet

## [0.3.36]

- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098
- fix: a bug

## [0.3.35]

- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f
- fix(example): retain recurrent state
- feat: update llama.cpp to ggml-org/llama.cpp@adb55e514

## [0.3.34]

- docs: no llama.cpp update in this release

## [0.3.33]

- feat: Update llama.cpp to ggerganov/llama.cpp@78D2F5246
"""


def test_changelog_picks_the_requested_version():
    assert setup_llama_cpp.llama_cpp_commit_from_changelog(CHANGELOG, "0.3.36") == "0c1e57098"


def test_changelog_takes_the_newest_update_of_a_release():
    assert setup_llama_cpp.llama_cpp_commit_from_changelog(CHANGELOG, "0.3.35") == "4df29be4f"


def test_changelog_release_without_update_keeps_the_previous_commit():
    assert setup_llama_cpp.llama_cpp_commit_from_changelog(CHANGELOG, "0.3.34") == "78d2f5246"


def test_changelog_missing_version_is_a_clear_error():
    with pytest.raises(setup_llama_cpp.ChangelogError, match=r"no '## \[0\.3\.99\]' section"):
        setup_llama_cpp.llama_cpp_commit_from_changelog(CHANGELOG, "0.3.99")


def test_changelog_version_without_any_commit_is_an_error():
    text = "## [1.0.0]\n\n- fix: nothing about llama.cpp\n"
    with pytest.raises(setup_llama_cpp.ChangelogError, match="names no llama.cpp commit"):
        setup_llama_cpp.llama_cpp_commit_from_changelog(text, "1.0.0")


def test_changelog_version_is_matched_exactly():
    """0.3.3 must not match the 0.3.36 or 0.3.33 headings."""
    with pytest.raises(setup_llama_cpp.ChangelogError):
        setup_llama_cpp.llama_cpp_commit_from_changelog(CHANGELOG, "0.3.3")


@pytest.mark.skipif(
    not LLAMA_CPP_DIR.is_dir(),
    reason=f"{LLAMA_CPP_DIR} is absent: it is created by `make venv` (tests run outside make?)",
)
def test_llama_cpp_converter_is_in_venv(deps):
    for rel in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py"):
        assert (LLAMA_CPP_DIR / rel).is_file(), f"{LLAMA_CPP_DIR / rel} is missing: run `make venv`"
    commit_file = LLAMA_CPP_DIR / "COMMIT"
    assert commit_file.is_file(), f"{commit_file} is missing: run `make venv`"
    assert re.fullmatch(r"[0-9a-f]{7,40}", commit_file.read_text().strip()), commit_file.read_text()
    version = deps["llama-cpp-python"][1]
    assert (LLAMA_CPP_DIR / f"{setup_llama_cpp.STAMP_PREFIX}{version}").is_file(), (
        f"{LLAMA_CPP_DIR} does not come from llama-cpp-python {version}: run `make venv`"
    )


# --- the CUDA flavour of the llama.cpp build (scripts/build_llama_tools.py) -------------------------

build_llama_tools = _load_script("build_llama_tools")


@pytest.mark.parametrize(
    ("smi", "caps"),
    [("9.0\n", ["90"]), ("8.6\n9.0\n8.6\n", ["86", "90"]), ("12.0\n7.5", ["75", "120"]), ("", []),
     ("No devices were found\n", []), ("NVIDIA-SMI has failed because it couldn't communicate\n8.9", ["89"])],
)
def test_compute_caps_from_nvidia_smi(smi, caps):
    assert build_llama_tools.parse_compute_caps(smi) == caps


def test_only_the_gpus_present_are_compiled_for():
    assert build_llama_tools.cuda_architectures(["86", "90"]) == ("86-real", "90-real")
    assert build_llama_tools.cuda_architectures(["90", "120"]) == ("90-real", "120a-real")  # Blackwell: 'a'


def test_driver_cuda_version():
    header = "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: 12.8     |"
    assert build_llama_tools.driver_cuda_major(header) == 12
    assert build_llama_tools.driver_cuda_major("no header") is None


def test_nvcc_is_looked_for_where_toolkits_live(tmp_path):
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("")
    find = build_llama_tools.find_nvcc
    assert find({"CUDA_HOME": str(tmp_path / "cuda")}, which=lambda _: None) == nvcc
    assert find({"CUDACXX": str(nvcc)}, which=lambda _: None) == nvcc
    assert find({}, which=lambda _: str(nvcc)) == nvcc
    assert find({"CUDA_HOME": str(tmp_path / "none")}, which=lambda _: None) in (None, Path("/usr/local/cuda/bin/nvcc"))


def test_the_flavour_follows_the_machine():
    choose = build_llama_tools.choose_flavour
    nvcc = Path("/opt/cuda/bin/nvcc")
    assert choose("auto", [], None).name == "cpu"  # no GPU: no toolkit is looked at
    assert choose("auto", [], nvcc).name == "cpu"
    assert choose("auto", ["90"], None).name == "cpu"  # a GPU but no toolkit: still a working CPU build
    cuda = choose("auto", ["86", "90"], nvcc, "Build cuda_12.8.r12.8")
    assert (cuda.name, cuda.archs, cuda.nvcc) == ("cuda", ("86-real", "90-real"), str(nvcc))
    assert choose("off", ["90"], nvcc).name == "cpu"
    with pytest.raises(ValueError, match="LLAMA_CUDA=on but nvidia-smi reports no GPU"):
        choose("on", [], nvcc)
    with pytest.raises(ValueError, match="LLAMA_CUDA=on but no CUDA toolkit"):
        choose("on", ["90"], None)


def test_cmake_args_and_cache_keys_per_flavour():
    cpu = build_llama_tools.CPU
    cuda = build_llama_tools.choose_flavour("auto", ["90"], Path("/opt/cuda/bin/nvcc"), "Build cuda_12.8")
    assert build_llama_tools.cmake_args(cpu) == build_llama_tools.CMAKE_ARGS  # the CPU build as it always was
    args = build_llama_tools.cmake_args(cuda).split()
    assert args[: len(build_llama_tools.CMAKE_ARGS.split())] == build_llama_tools.CMAKE_ARGS.split()
    cuda_args = {"-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90-real", "-DCMAKE_CUDA_COMPILER=/opt/cuda/bin/nvcc"}
    assert cuda_args <= set(args)
    key = build_llama_tools.build_key
    assert key("0.3.36") == key("0.3.36", cpu) and key("0.3.36").startswith("0.3.36-")
    assert key("0.3.36", cuda).startswith("0.3.36-cuda90-real-") and key("0.3.36", cuda) != key("0.3.36")
    moved = build_llama_tools.choose_flavour("auto", ["90"], Path("/usr/bin/nvcc"), "Build cuda_12.8")
    assert key("0.3.36", moved) == key("0.3.36", cuda)  # same toolkit elsewhere: same build
    newer = build_llama_tools.choose_flavour("auto", ["90"], Path("/usr/bin/nvcc"), "Build cuda_12.9")
    assert key("0.3.36", newer) != key("0.3.36", cuda)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: its flavour may be CUDA")
def test_the_cpu_build_here_is_the_cached_one(deps):
    # No GPU here: the flavour is the CPU's, and its key names the build `make venv` made.
    flavour = build_llama_tools.detect_flavour("auto", Path("/nonexistent"))
    assert flavour.name == "cpu" and flavour.reasons == ("no GPU reported by nvidia-smi",)
    cache = Path.home() / ".cache" / "quantflow" / "llama.cpp-build"
    if cache.is_dir():
        assert (cache / build_llama_tools.build_key(deps["llama-cpp-python"][1])).is_dir()


def test_a_toolkit_is_merged_from_the_component_wheels(tmp_path):
    # The layout NVIDIA's wheels install: one folder per component under nvidia/.
    pkgs = tmp_path / "wheels" / "nvidia"
    for rel in ("cuda_nvcc/bin/nvcc", "cuda_nvcc/bin/ptxas", "cuda_nvcc/nvvm/libdevice/libdevice.10.bc",
                "cuda_nvcc/include/crt/host_config.h", "cuda_runtime/include/cuda_runtime.h",
                "cuda_runtime/lib/libcudart.so.12", "cublas/include/cublas_v2.h", "cublas/lib/libcublas.so.12",
                "cublas/lib/libcublasLt.so.12", "cuda_cccl/include/cub/cub.cuh"):
        (pkgs / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkgs / rel).write_text(rel)
    root = tmp_path / "toolkit"
    nvcc = build_llama_tools.merge_toolkit(tmp_path / "wheels", root)
    assert nvcc == root / "bin" / "nvcc" and not nvcc.is_symlink()  # copied: nvcc resolves paths from its own
    for rel in ("include/cuda_runtime.h", "include/cublas_v2.h", "include/crt/host_config.h", "include/cub/cub.cuh",
                "nvvm/libdevice/libdevice.10.bc", "lib64/libcublas.so.12"):
        assert (root / rel).is_file(), rel
    for lib in ("libcudart", "libcublas", "libcublasLt"):
        assert (root / "lib" / f"{lib}.so").resolve() == (pkgs / ("cublas" if "cublas" in lib else "cuda_runtime")
                                                           / "lib" / f"{lib}.so.12").resolve()
