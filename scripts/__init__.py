"""The reproduction's own code, run from the repository root as packages:
``python -m scripts.imagenette`` (the Imagenette reproduction) and ``python -m scripts.release_parity``."""
