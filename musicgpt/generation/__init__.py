"""Generation (torch): continue a primer under the token grammar with a KV-cached sampler.

    generate.py     `generate(...)` (also `musicgpt.generate`), `Generation`: one batch, stepped token by token
    sample.py       `Sample`: a generated piece and how it is written (MIDI, arcs.json, viewer, WAV)
    sampling.py     logits -> a token: temperature, top-k, top-p, min-p, seeded Gumbel draws
    constraints.py  which tokens may come next: the grammar mask, the long-note limit
    primer.py       the primer's token ids, cut to S seconds or N tokens
"""
