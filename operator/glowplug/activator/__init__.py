"""The activator: an OpenAI-compatible proxy that holds requests and wakes services from zero."""
