"""BiLMa: bidirectional local matching for text-based person re-identification."""

__version__ = "0.1.0"
