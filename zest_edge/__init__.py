"""zest-edge: zero-shot sparse fine-tuning for edge devices."""
import logging

# onnxruntime.training imports torch.utils.cpp_extension, which warns on every CPU-only machine that it found no
# CUDA runtime; `zest-edge doctor` reports CUDA availability instead.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
