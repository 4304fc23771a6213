"""libnet's benchmarks: one module each, run as ``python -m benchmarks.NAME``.

Each prints progress to stderr and, as the last line of stdout, one JSON
object ``{"benchmark", "params", "metrics", "peers", "ratios"}``; the peer is
measured in the same run, so the ratios hold on a noisy machine.
"""
