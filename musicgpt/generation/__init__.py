"""Generation (torch): continue a primer under the token grammar with a KV-cached sampler.

    setup.py        the one place user arguments become a prompt and `GenerationSettings` (`GenerationRequest`,
                    `prepare`), with every default; the model's tokenizer (`load_model_and_tokenizer`)
    loop.py         `generate(...)` (also `musicgpt.generate`), `Generation`: one batch, stepped token by token
    infilling.py    `infill(...)` (also `musicgpt.infill`): regenerate a span of a piece, keep the rest
    sample.py       `Sample`: a generated piece and how it is written (MIDI, arcs.json, WAV)
    sampling.py     logits -> a token: temperature, top-k, top-p, min-p, seeded Gumbel draws
    constraints.py  which tokens may come next: the grammar mask, the long-note limit, the infilling clock
    guidance.py     classifier-free guidance: the unconditional pass and the mix
    primer.py       the primer's token ids, cut to S seconds or N tokens
    pipeline.py     `pipeline()` and `set_seed()`: the Hugging Face-style way in

Generation writes data (MIDI, arcs.json), never pages: the viewer is musicgpt.viz's (`write_html`).
(The loop's file is not called generate.py, nor infilling.py infill.py: the package exports the functions
`generate` and `infill`, and a submodule of the same name would shadow them.)
"""

from musicgpt.generation.infilling import infill
from musicgpt.generation.loop import Generation, generate
from musicgpt.generation.sample import Sample
from musicgpt.generation.setup import (DEFAULT_MAX_NOTE_SECONDS, DEFAULT_NEW_TOKENS, TOKENS_PER_SECOND_CAP,
                                       GenerationRequest, GenerationSettings, Plan, load_model_and_tokenizer, prepare)

__all__ = ["DEFAULT_MAX_NOTE_SECONDS", "DEFAULT_NEW_TOKENS", "TOKENS_PER_SECOND_CAP", "Generation", "GenerationRequest",
           "GenerationSettings", "Plan", "Sample", "generate", "infill", "load_model_and_tokenizer", "prepare"]
