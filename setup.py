"""Builds zest-edge and its C++ extension zest_edge._fused (cpp_ext/) with torch.utils.cpp_extension.

CUDA kernels are added when a CUDA toolkit is found and torch sees a GPU or ZEST_BUILD_CUDA=1; otherwise CPU only.
"""
import os
import shutil

from setuptools import setup


def find_cuda_home():
    """$CUDA_HOME, the toolkit holding nvcc on PATH, or /usr/local/cuda: the first with CUDA headers, else None."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                  "/usr/local/cuda"]
    return next((c for c in candidates if c and os.path.isfile(os.path.join(c, "include", "cuda_runtime.h"))), None)


cuda_home = find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = bool(cuda_home) and (torch.cuda.is_available() or os.environ.get("ZEST_BUILD_CUDA") == "1")
cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]  # OpenMP makes at::parallel_for parallel
sources = ["cpp_ext/fused_optim.cpp"]
if with_cuda:
    extension = CUDAExtension("zest_edge._fused", sources + ["cpp_ext/fused_optim_cuda.cu"],
                              define_macros=[("ZEST_WITH_CUDA", None)], extra_link_args=["-fopenmp"],
                              extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--fmad=false"]})
else:
    extension = CppExtension("zest_edge._fused", sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
