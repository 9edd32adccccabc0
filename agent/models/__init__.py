"""Everything that answers a prompt: the vLLM (OpenAI-protocol) client, the in-process transformers backend, the
vLLM launcher and the CPU baseline grounder."""
