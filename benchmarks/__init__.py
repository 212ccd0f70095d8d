"""One benchmark per speed claim, run from the repository root as ``python -m benchmarks.bench_NAME``
(see benchmarks/README.md); ``_common`` and the ``_*_parts`` modules are their shared pieces."""
