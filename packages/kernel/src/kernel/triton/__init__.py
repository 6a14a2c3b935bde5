"""Triton kernels for the registry's ops (registered under the implementation name "triton").

Each module imports ``triton`` itself, so ``import kernel`` and ``import kernel.triton`` work without triton
installed; the registry imports a module only when its implementation is chosen. The kernels run on CUDA; the tests
run them on CPU with ``TRITON_INTERPRET=1`` (Triton's interpreter) on small shapes against ``kernel.reference``.
"""
