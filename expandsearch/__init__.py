"""ExpandSearch front door: the ``expandsearch`` CLI, configs, trainers and checkpointing."""

__version__ = "0.1.0"
