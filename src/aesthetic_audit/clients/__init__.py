"""Clients for remote APIs that backends share (no torch needed)."""

from .openai_compat import EndpointUnreachable, OpenAICompatClient, RequestFailed

__all__ = ["EndpointUnreachable", "OpenAICompatClient", "RequestFailed"]
