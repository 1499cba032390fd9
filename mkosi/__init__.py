"""mkosi: build bespoke OS images."""

__version__ = "15.0.0"
