"""Generation (torch): continue a primer under the token grammar with a KV-cached sampler."""
