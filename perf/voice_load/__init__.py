"""A voice-call load generator for any OpenAI-compatible chat endpoint (issue 4, in progress)."""
