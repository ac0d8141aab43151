"""Pure Anthropic <-> OpenAI Chat Completions conversion (no I/O). Rules: docs/translation.md."""
from .models import Route, route, wants_thinking
from .request import UnsupportedContent, anthropic_to_openai
from .response import UpstreamFormatError, openai_to_anthropic
from .schema import clean_schema
from .stream import PING, StreamTranslator, format_sse
from .tokens import count_input_tokens, estimate_input_tokens
from .validation import RequestValidationError, validate_count_tokens_request, validate_messages_request

__all__ = [
    "PING",
    "RequestValidationError",
    "Route",
    "StreamTranslator",
    "UnsupportedContent",
    "UpstreamFormatError",
    "anthropic_to_openai",
    "clean_schema",
    "count_input_tokens",
    "estimate_input_tokens",
    "format_sse",
    "openai_to_anthropic",
    "route",
    "validate_count_tokens_request",
    "validate_messages_request",
    "wants_thinking",
]
