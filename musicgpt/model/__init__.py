"""The model (torch): a GPT-2 decoder with relative attention over token ids, its KV cache and decode step.

    config.py           `GPTConfig` and the presets (tiny, small, base)
    gpt.py              `MusicGPT` (forward, cache, attention maps), checkpoints: `load_model`, `save_model`,
                        `load_checkpoint` (musicgpt.checkpoint loads; a loaded model carries its tokenizer)
    attention.py        relative attention: picks the fused CPU kernel, SDPA with a bias or the eager path
    skew.py             the skewing, masks and relative tables all three paths share
    attention_eager.py  the eager PyTorch path: block by block, heads over worker threads
    relative_kernel.py builds and loads the fused kernel (csrc/relative_attention.cpp)
    kv_cache.py         keys and values of past tokens, with a sliding window
    decode_step.py      `Decoder`: one token per sequence on the cache, the fast path of generation
    prefill.py          `teacher_force`: ids fed into a cache in chunks (generation's prefill, arcs, the head atlas)
    _hugepages.py       CPU buffers on transparent huge pages for the decode step
    inspect.py          module tree, state-dict table, embeddings as arrays (what `musicgpt info` shows)
"""

from musicgpt.model.config import POSITIONS, PRESETS, GPTConfig
from musicgpt.model.gpt import MLP, Block, ModelOutput, MusicGPT, SelfAttention, load_checkpoint, load_model, save_model
from musicgpt.model.kv_cache import KVCache

__all__ = ["MLP", "Block", "GPTConfig", "KVCache", "ModelOutput", "MusicGPT", "POSITIONS", "PRESETS", "SelfAttention",
           "load_checkpoint", "load_model", "save_model"]
