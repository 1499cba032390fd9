"""mkosi: build bespoke OS images."""

# The version scheme is 0.N: a number upstream mkosi never released (its releases are 1, 2, ...),
# so it cannot be mistaken for one of them, and it sorts below all of them.
__version__ = "0.1"
