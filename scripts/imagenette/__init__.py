"""The measured reproduction of GFNet on Imagenette: ``python -m scripts.imagenette`` with its
steps as subcommands (``reproduce``, ``gather``, ``table``)."""
