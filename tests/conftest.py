"""Test-session settings: one torch thread (small kernels on a shared 2-core machine run faster that way)."""
import torch

torch.set_num_threads(1)
