"""Custom CUDA kernels for GoogLeNet's convolutions, kept as a lab (see kernels/README.md).

Light on purpose: nothing here imports CuPy. Modules:

* ``conv_cuda`` -- a package: configs, launch plans, sources, the device probe, the CuPy
  launcher and the public dispatch API used by ``layers`` (one job per module);
* ``autotune``  -- the tile-configuration choice (valid candidates only) and its cache on disk;
* ``shapes``    -- every convolution of GoogLeNet, with MAC counts;
* ``lab``       -- NumPy reference, validation and timing harness (``python -m kernels.lab``);
* ``emu``       -- runs the kernels on the CPU (one OS thread per CUDA thread) for testing;
* ``sanitize``  -- the emulation under ThreadSanitizer and AddressSanitizer + UBSan;
* ``cpu``       -- Numba kernels for the CPU path of the layers (a separate subpackage).
"""
