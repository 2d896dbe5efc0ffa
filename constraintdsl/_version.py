"""The package version, in one place (``constraintdsl.__version__``, recorded in artifacts and the run store)."""

__version__ = "0.1.0"
