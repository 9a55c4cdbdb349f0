"""The benchmarks (``make bench``, ``python -m benchmarks``): kept out of the package.

:mod:`.scenarios` runs each scenario against a real server process beside its baseline;
:mod:`.loadgen` is the load generator, in a process of its own; :mod:`.nchan` runs nginx
with the Nchan module, the fan-out ceiling the streams are compared with.
"""
