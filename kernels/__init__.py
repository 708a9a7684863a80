"""Custom CUDA kernels for GoogLeNet's convolutions, kept as a lab (see kernels/README.md).

Light on purpose: nothing here imports CuPy. Modules:

* ``conv_cuda`` -- launch plans, CuPy launcher and the public dispatch API used by ``layers``;
* ``autotune``  -- times tile configurations and caches the choice on disk;
* ``shapes``    -- every convolution of GoogLeNet, with MAC counts;
* ``lab``       -- NumPy reference, validation and timing harness (``python -m kernels.lab``);
* ``emu``       -- runs the kernels on the CPU (one OS thread per CUDA thread) for testing;
* ``cpu``       -- Numba kernels for the CPU path of the layers (a separate subpackage).
"""
