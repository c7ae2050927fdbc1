"""Reading every provider's ``usage`` shape, and pricing it exactly.

Every expected dollar amount is worked out by hand in the test from the
per-token prices genai-prices ships (asserted first, so a data change shows
up here rather than as a wrong total):

- gpt-4o-mini: input 1.5e-07, cached input 7.5e-08, output 6e-07
- claude-sonnet-4-5: input 3e-06, cache read 3e-07, cache write 3.75e-06, output 1.5e-05
- gemini/gemini-2.5-flash: input 3e-07, cached 3e-08, output and reasoning 2.5e-06
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from crew_budget.errors import UsageError
from crew_budget.pricing import Price, PriceBook
from crew_budget.usage import Usage, cost_of, parse_usage

BOOK = PriceBook()
D = Decimal


def test_prices_from_genai_prices() -> None:
    mini = BOOK.get("gpt-4o-mini")
    assert (mini.input, mini.cached_input, mini.output, mini.cache_write, mini.reasoning) == (
        D("0.00000015"), D("0.000000075"), D("0.0000006"), None, None)
    sonnet = BOOK.get("claude-sonnet-4-5")
    assert (sonnet.input, sonnet.cached_input, sonnet.cache_write, sonnet.output) == (
        D("0.000003"), D("0.0000003"), D("0.00000375"), D("0.000015"))
    flash = BOOK.get("gemini/gemini-2.5-flash")
    # genai-prices has no separate reasoning rate: thoughts bill as output.
    assert (flash.input, flash.cached_input, flash.output, flash.reasoning) == (
        D("0.0000003"), D("0.00000003"), D("0.0000025"), None)
    assert (mini.source, sonnet.source, flash.source) == ("genai-prices",) * 3


# -- OpenAI chat completions ---------------------------------------------------


def test_openai_chat_dict_cached_and_reasoning_are_inside_the_totals() -> None:
    usage = parse_usage({
        "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
        "prompt_tokens_details": {"cached_tokens": 400, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 0},
    })
    assert usage == Usage(input_tokens=600, cached_input_tokens=400, output_tokens=300,
                          reasoning_tokens=120)
    assert usage.prompt_tokens == 1000
    # 600 x 1.5e-07 + 400 x 7.5e-08 + 300 x 6e-07 = 0.00009 + 0.00003 + 0.00018
    assert cost_of(usage, BOOK.get("gpt-4o-mini")) == D("0.0003")


def test_openai_sdk_objects_usage_and_whole_completion() -> None:
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion
    from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails

    sdk_usage = CompletionUsage(
        prompt_tokens=1187, completion_tokens=14, total_tokens=1201,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1152, audio_tokens=0),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=0),
    )
    expected = Usage(input_tokens=35, cached_input_tokens=1152, output_tokens=14)
    assert parse_usage(sdk_usage) == expected
    completion = ChatCompletion(
        id="chatcmpl-1", object="chat.completion", created=1, model="gpt-4o-mini",
        choices=[{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": "hi"}}],
        usage=sdk_usage,
    )
    assert parse_usage(completion) == expected
    # 35 x 1.5e-07 + 1152 x 7.5e-08 + 14 x 6e-07
    assert cost_of(expected, BOOK.get("gpt-4o-mini")) == (
        D("0.00000525") + D("0.0000864") + D("0.0000084"))


def test_litellm_openai_shape_with_anthropic_cache_fields() -> None:
    # litellm's ModelResponse.usage for Claude: prompt_tokens includes the
    # cache read (also in prompt_tokens_details) and the cache write.
    usage = parse_usage({
        "prompt_tokens": 1250, "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000,
    })
    assert usage == Usage(input_tokens=50, cached_input_tokens=1000, cache_write_tokens=200,
                          output_tokens=100)
    # 50 x 3e-06 + 1000 x 3e-07 + 200 x 3.75e-06 + 100 x 1.5e-05
    assert cost_of(usage, BOOK.get("claude-sonnet-4-5")) == D("0.0027")


# -- OpenAI Responses API ------------------------------------------------------


def test_responses_api_dict_and_sdk_object() -> None:
    from openai.types.responses import ResponseUsage
    from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

    raw = {"input_tokens": 2000, "output_tokens": 500, "total_tokens": 2500,
           "input_tokens_details": {"cached_tokens": 1500},
           "output_tokens_details": {"reasoning_tokens": 320}}
    expected = Usage(input_tokens=500, cached_input_tokens=1500, output_tokens=500,
                     reasoning_tokens=320)
    assert parse_usage(raw) == expected
    sdk = ResponseUsage(input_tokens=2000, output_tokens=500, total_tokens=2500,
                        input_tokens_details=InputTokensDetails(cached_tokens=1500,
                                                                cache_write_tokens=0),
                        output_tokens_details=OutputTokensDetails(reasoning_tokens=320))
    assert parse_usage(sdk) == expected
    # o4-mini: 500 x 1.1e-06 + 1500 x 2.75e-07 + 500 x 4.4e-06
    assert cost_of(expected, BOOK.get("o4-mini")) == D("0.00055") + D("0.0004125") + D("0.0022")


def test_separate_reasoning_price_applies_to_reasoning_tokens_only() -> None:
    price = Price("thinker", "openai", D("0.000001"), D("0.000004"), reasoning=D("0.000008"))
    usage = parse_usage({"prompt_tokens": 100, "completion_tokens": 300,
                         "completion_tokens_details": {"reasoning_tokens": 200}})
    # 100 x 1e-06 + (300 - 200) x 4e-06 + 200 x 8e-06
    assert cost_of(usage, price) == D("0.0001") + D("0.0004") + D("0.0016")


# -- Anthropic -----------------------------------------------------------------


def test_anthropic_dict_cache_read_and_write_are_outside_input_tokens() -> None:
    usage = parse_usage({
        "input_tokens": 50, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 100, "service_tier": "standard",
    })
    assert usage == Usage(input_tokens=50, cached_input_tokens=1000, cache_write_tokens=200,
                          output_tokens=100)
    assert usage.prompt_tokens == 1250
    assert cost_of(usage, BOOK.get("claude-sonnet-4-5")) == D("0.0027")


def test_anthropic_sdk_usage_and_whole_message() -> None:
    from anthropic.types import Message
    from anthropic.types import Usage as AnthropicUsage

    sdk = AnthropicUsage(input_tokens=3, output_tokens=4, cache_read_input_tokens=1217,
                         cache_creation_input_tokens=0)
    expected = Usage(input_tokens=3, cached_input_tokens=1217, output_tokens=4)
    assert parse_usage(sdk) == expected
    message = Message(id="msg_1", type="message", role="assistant", model="claude-sonnet-4-5",
                      content=[{"type": "text", "text": "Hello"}], stop_reason="end_turn",
                      stop_sequence=None, usage=sdk)
    assert parse_usage(message) == expected
    # 3 x 3e-06 + 1217 x 3e-07 + 4 x 1.5e-05 = 0.000009 + 0.0003651 + 0.00006
    assert cost_of(expected, BOOK.get("claude-sonnet-4-5")) == D("0.0004341")


def test_missing_cache_prices_bill_at_the_input_rate() -> None:
    price = Price("plain", "other", D("0.000002"), D("0.000004"))
    usage = Usage(input_tokens=10, cached_input_tokens=20, cache_write_tokens=30, output_tokens=5)
    # (10 + 20 + 30) x 2e-06 + 5 x 4e-06: never cheaper than the map says
    assert cost_of(usage, price) == D("0.00012") + D("0.00002")


# -- LangChain -----------------------------------------------------------------


def test_langchain_usage_metadata_dict_and_message() -> None:
    from langchain_core.messages import AIMessage

    meta = {"input_tokens": 1250, "output_tokens": 100, "total_tokens": 1350,
            "input_token_details": {"cache_read": 1000, "cache_creation": 200},
            "output_token_details": {"reasoning": 30}}
    expected = Usage(input_tokens=50, cached_input_tokens=1000, cache_write_tokens=200,
                     output_tokens=100, reasoning_tokens=30)
    assert parse_usage(meta) == expected
    assert parse_usage(AIMessage(content="hi", usage_metadata=meta)) == expected
    plain = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10,
             "input_token_details": {}, "output_token_details": {}}
    assert parse_usage(plain) == Usage(input_tokens=7, output_tokens=3)


# -- Gemini --------------------------------------------------------------------


def test_gemini_usage_metadata() -> None:
    usage = parse_usage({"promptTokenCount": 1000, "cachedContentTokenCount": 600,
                         "candidatesTokenCount": 100, "thoughtsTokenCount": 50,
                         "totalTokenCount": 1150})
    assert usage == Usage(input_tokens=400, cached_input_tokens=600, output_tokens=150,
                          reasoning_tokens=50)
    # 400 x 3e-07 + 600 x 3e-08 + 100 x 2.5e-06 + 50 x 2.5e-06
    assert cost_of(usage, BOOK.get("gemini/gemini-2.5-flash")) == (
        D("0.00012") + D("0.000018") + D("0.00025") + D("0.000125"))


def test_wrapped_usage_keys() -> None:
    assert parse_usage({"id": "x", "usage": {"prompt_tokens": 5, "completion_tokens": 2}}) == (
        Usage(input_tokens=5, output_tokens=2))
    assert parse_usage({"token_usage": {"prompt_tokens": 5, "completion_tokens": 2}}) == (
        Usage(input_tokens=5, output_tokens=2))


def test_usage_instance_passes_through() -> None:
    usage = Usage(input_tokens=1, output_tokens=2)
    assert parse_usage(usage) is usage
    assert usage + Usage(input_tokens=3, cached_input_tokens=4) == Usage(4, 4, 0, 2, 0)


# -- malformed -------------------------------------------------------------------


class _Opaque:
    __slots__ = ()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (None, "has no usage"),
        (_Opaque(), "has no usage"),
        ({}, "no token counts"),
        ({"foo": 1, "bar": "x"}, "keys: bar, foo"),
        ({"prompt_tokens": "10", "completion_tokens": 2}, "not a token count"),
        ({"prompt_tokens": True}, "not a token count"),
        ({"input_tokens": -5, "output_tokens": 1}, "non-negative"),
        ({"prompt_tokens": 10.5, "completion_tokens": 1}, "whole number"),
        ({"prompt_tokens": 10, "completion_tokens": 5,
          "completion_tokens_details": {"reasoning_tokens": 9}}, "reasoning tokens"),
        ({"usage": {"nothing": 0}}, "no token counts"),
    ],
    ids=["none", "opaque", "empty", "unknown-keys", "string", "bool", "negative", "fraction",
         "reasoning-gt-output", "empty-wrapper"],
)
def test_malformed_usage_is_a_usage_error(raw: Any, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_usage(raw)


def test_usage_error_names_the_stream_fix() -> None:
    with pytest.raises(UsageError, match="include_usage"):
        parse_usage(None)


def test_bounds_are_inclusive_of_max_tokens() -> None:
    from crew_budget.money import MAX_TOKENS
    from crew_budget.usage import check_usage

    assert MAX_TOKENS == 10**9
    top = parse_usage({"prompt_tokens": MAX_TOKENS, "completion_tokens": MAX_TOKENS})
    assert top == Usage(input_tokens=10**9, output_tokens=10**9)
    assert check_usage(top) is top
    with pytest.raises(UsageError, match="more than the 1,000,000,000 tokens"):
        parse_usage({"prompt_tokens": MAX_TOKENS + 1, "completion_tokens": 0})
    # A whole float (some JSON decoders produce them) is a count.
    assert parse_usage({"input_tokens": 12.0, "output_tokens": 3.0}) == Usage(12, 0, 0, 3, 0)


def test_gemini_cache_larger_than_the_prompt_never_goes_negative() -> None:
    # Exclusive counts in inclusive fields (as in the OpenAI branch): trust the parts.
    usage = parse_usage({"promptTokenCount": 10, "cachedContentTokenCount": 100,
                         "candidatesTokenCount": 5})
    assert usage == Usage(input_tokens=10, cached_input_tokens=100, output_tokens=5)
    assert cost_of(usage, BOOK.get("gemini/gemini-2.5-flash")) == (
        10 * D("0.0000003") + 100 * D("0.00000003") + 5 * D("0.0000025"))


def test_usage_is_a_frozen_value_with_or_without_the_extra_counts() -> None:
    """The extra fields are stored only when set (see ``Usage``): equality,
    hashing, pickling, ``replace``, ``+`` and immutability hold either way."""
    import pickle
    from dataclasses import FrozenInstanceError, fields, replace

    plain = Usage(10, 2, 3, 40, 5)
    extra = Usage(10, 2, 3, 40, 5, cache_write_1h_tokens=1, service_tier="flex")
    assert [f.name for f in fields(Usage)][5:] == [
        "cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens",
        "image_input_tokens", "image_output_tokens", "web_search_requests", "service_tier"]
    assert (plain.has_extras, extra.has_extras) == (False, True)
    assert Usage(1, service_tier="batch").has_extras is False  # a tier alone changes rates only
    assert replace(plain, cache_write_1h_tokens=1, service_tier="flex") == extra
    assert pickle.loads(pickle.dumps(extra)) == extra
    assert pickle.loads(pickle.dumps(plain)) == plain
    assert len({plain, extra, Usage(10, 2, 3, 40, 5)}) == 2
    assert plain + extra == Usage(20, 4, 6, 80, 10, cache_write_1h_tokens=1)
    with pytest.raises(FrozenInstanceError):
        plain.input_tokens = 3  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        plain.audio_input_tokens = 3  # type: ignore[misc]


# -- provider wire formats read directly (issue 10, item 2) ----------------------------


def test_gemini_tool_use_prompt_tokens_are_billed_as_input() -> None:
    # ai.google.dev/api/generate-content#UsageMetadata: toolUsePromptTokenCount
    # is counted apart from promptTokenCount (totalTokenCount adds both).
    usage = parse_usage({"usageMetadata": {
        "promptTokenCount": 1000, "toolUsePromptTokenCount": 500,
        "candidatesTokenCount": 200, "thoughtsTokenCount": 100, "totalTokenCount": 1800,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 600},
                                {"modality": "AUDIO", "tokenCount": 400}]}})
    assert usage == Usage(input_tokens=1500, output_tokens=300, reasoning_tokens=100,
                          audio_input_tokens=400)
    # gemini-2.5-flash: 1,100 x $0.30 + 400 audio x $1.00 + 300 x $2.50, per million.
    assert cost_of(usage, BOOK.get("gemini/gemini-2.5-flash")) == D("0.00148")


def test_bedrock_converse_usage_excludes_the_cache_from_input_tokens() -> None:
    # docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_TokenUsage.html
    raw = {"inputTokens": 1800, "outputTokens": 400, "totalTokens": 7200,
           "cacheReadInputTokens": 4000, "cacheWriteInputTokens": 1000}
    usage = parse_usage({"output": {}, "stopReason": "end_turn", "usage": raw})
    assert usage == Usage(input_tokens=1800, cached_input_tokens=4000, cache_write_tokens=1000,
                          output_tokens=400)
    # us.anthropic.claude-sonnet-4: $3 / $0.30 read / $3.75 write / $15, per million.
    price = BOOK.get("bedrock/us.anthropic.claude-sonnet-4-20250514-v1:0")
    assert cost_of(usage, price) == D("0.01635")
    assert parse_usage({"inputTokens": 0, "outputTokens": 7}) == Usage(output_tokens=7)


def test_one_hour_cache_writes_from_converse_cache_details_and_litellm() -> None:
    # API_runtime_CacheDetail: {"ttl": "5m" | "1h", "inputTokens": n} per checkpoint.
    raw = {"inputTokens": 500, "outputTokens": 200, "cacheWriteInputTokens": 3000,
           "cacheDetails": [{"ttl": "1h", "inputTokens": 2000},
                            {"ttl": "5m", "inputTokens": 1000}]}
    expected = Usage(input_tokens=500, cache_write_tokens=3000, output_tokens=200,
                     cache_write_1h_tokens=2000)
    assert parse_usage(raw) == expected
    # The same call as litellm reports it (ModelResponse.usage.model_dump()).
    litellm_shape = {"prompt_tokens": 3500, "completion_tokens": 200,
                     "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 0,
                     "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 3000,
                                               "cache_creation_token_details": {
                                                   "ephemeral_5m_input_tokens": 1000,
                                                   "ephemeral_1h_input_tokens": 2000}}}
    assert parse_usage(litellm_shape) == expected
    # global.anthropic.claude-sonnet-4-5: $3 in / $3.75 5-min write / $6 1-hour
    # write / $15 out, per million.
    price = BOOK.get("bedrock/global.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert cost_of(expected, price) == (500 * D(3) + 1000 * D("3.75") + 2000 * D(6)
                                        + 200 * D(15)) / 10**6 == D("0.02025")
