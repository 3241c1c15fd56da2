"""The package version, in a module of its own so inner layers never import the package's public face."""

__version__ = "0.3.0"
