"""Moved to ``crew_budget.estimate.images``; this name keeps old imports working."""

from crew_budget.estimate.images import (
    ImagePolicy,
    anthropic_policy,
    base64_size,
    data_url_size,
    gemini_policy,
    image_size,
    openai_policy,
)

__all__ = [
    "ImagePolicy",
    "anthropic_policy",
    "base64_size",
    "data_url_size",
    "gemini_policy",
    "image_size",
    "openai_policy",
]
