"""quantflow: fine-tune, quantize, benchmark and choose a language model variant."""

__version__ = "0.1.0"
