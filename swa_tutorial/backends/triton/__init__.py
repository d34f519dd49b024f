"""The "triton" backend: a fused sliding-window kernel, forward and backward, the band never stored.

:mod:`.launcher` holds the autograd Function and the launch (plain PyTorch, importable without
triton); :mod:`.kernels` the ``@triton.jit`` kernels, imported with triton on the first call.
"""

from swa_tutorial.backends.triton.launcher import attend

__all__ = ["attend"]
