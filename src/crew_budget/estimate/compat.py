"""OpenAI-compatible hosts serving other model families (Llama, Qwen, Mistral, ...).

Sources are cited at each rule.
"""

from __future__ import annotations

# name substring -> (tiktoken encoding, factor). Documented approximations
# (vocabulary size and family), corrected per model by calibration.
_APPROX_FAMILIES: tuple[tuple[str, str, float], ...] = (
    ("gpt-oss", "o200k_base", 1.05),  # o200k_harmony vocabulary
    ("gemini", "o200k_base", 1.15),  # 256k SentencePiece vocabulary
    ("gemma", "o200k_base", 1.15),
    ("llama", "cl100k_base", 1.05),  # Llama 3: 128k tiktoken-style BPE
    ("qwen", "cl100k_base", 1.05),
    ("qwq", "cl100k_base", 1.05),
    ("deepseek", "cl100k_base", 1.10),
    ("mistral", "cl100k_base", 1.20),
    ("mixtral", "cl100k_base", 1.20),
    ("stral", "cl100k_base", 1.20),  # codestral, ministral, devstral, magistral
    ("pixtral", "cl100k_base", 1.20),
    ("command", "cl100k_base", 1.15),
    ("grok", "cl100k_base", 1.15),
)
_APPROX_DEFAULT = ("cl100k_base", 1.25)
_TIKTOKEN_NAMES = ("o200k_base", "cl100k_base", "o200k_harmony", "p50k_base", "r50k_base")
_APPROX_TOOL_PREAMBLE = 60
