"""Usage shapes added after the first parser: OpenAI cache writes, whole Gemini responses."""

from __future__ import annotations

from crew_budget.usage import Usage, parse_usage


def test_openai_chat_cache_write_tokens_are_split_out_of_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 5000,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 3000},
    }
    assert parse_usage(usage) == Usage(1000, 1000, 3000, 10, 0)


def test_openai_responses_cache_write_tokens() -> None:
    usage = {
        "input_tokens": 5000,
        "output_tokens": 10,
        "input_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 3000},
        "output_tokens_details": {"reasoning_tokens": 4},
    }
    assert parse_usage(usage) == Usage(1000, 1000, 3000, 10, 4)


def test_whole_gemini_response_with_usage_metadata() -> None:
    response = {
        "candidates": [],
        "usageMetadata": {
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 5,
        },
    }
    assert parse_usage(response) == Usage(100, 0, 0, 25, 5)
