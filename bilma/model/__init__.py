"""The BiLMa model: CLIP encoders, cross-modal modules, heads."""

from bilma.model.bilma import BiLMa, build_model

__all__ = ["BiLMa", "build_model"]
