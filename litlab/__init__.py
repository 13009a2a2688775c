"""litlab: recent research methods as pluggable PyTorch Lightning parts."""

__version__ = "0.1.0"
