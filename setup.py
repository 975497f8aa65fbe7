"""Build crysbench's native extension (crysbench/_C) with CMake.

The CUDA kernels are built when torch has CUDA and nvcc is found; force with
CRYSBENCH_CUDA=ON or OFF (default AUTO). CRYSBENCH_BUILD_JOBS sets the parallel build level.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DCRYSBENCH_CUDA={os.environ.get('CRYSBENCH_CUDA', 'AUTO').upper()}",
            f"-DCRYSBENCH_TORCH_VERSION={torch.__version__}",
            f"-DCRYSBENCH_TORCH_CUDA={torch.version.cuda or 'none'}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CRYSBENCH_BUILD_TYPE', 'Release')}",
            "-GNinja" if _has_ninja() else "",
        ]
        subprocess.run(["cmake", str(ROOT), *[a for a in args if a]], cwd=build_dir, check=True)
        jobs = os.environ.get("CRYSBENCH_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


def _has_ninja() -> bool:
    from shutil import which

    return which("ninja") is not None


setup(
    name="crysbench",
    version="0.1.0",
    description="Benchmarking harness for machine learning on crystals: scaling laws and transfer learning",
    packages=find_packages(include=["crysbench", "crysbench.*"]),
    package_data={"crysbench": ["py.typed", "element_properties.json", "datasets/builtin/MANIFEST.json", "datasets/builtin/*/*.jsonl.gz",
                                "datagen/*.csv.gz", "datagen/*.json"]},
    ext_modules=[CMakeExtension("crysbench._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["crysbench=crysbench.cli:main"]},
)
