"""Triton kernels (backend="triton"): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.

Imported on first use, so `import lsq_fast` needs no Triton.
"""
