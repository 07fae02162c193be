"""The installed package's version, in a module of its own so that any module can import it without the package's
`__init__` (which imports most of them)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf-instruct")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
