"""Benchmarks. ``python -m bench.conv_throughput --help`` times every convolution implementation
on GoogLeNet's convolutions; results (JSON, PNG) go to ``bench/results/``."""
