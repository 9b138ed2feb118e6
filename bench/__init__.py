"""Benchmarks that print measured figures (never timed tests).

Each is a module run from the repository root, so ``ensemble``, ``explain``
and ``bench`` import as packages without touching ``sys.path``::

    python -m bench.speed --help

``bench.common`` holds what they share: the default data paths, the options
several of them take, the JSON report and the other-processes CPU snapshot.
"""
