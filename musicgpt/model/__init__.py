"""The model (torch): a GPT-2 decoder with relative attention over token ids, its KV cache and decode step."""
