"""Lower-precision CPU decoding (musicgpt.model.precision): close to float32, and decoding on the cache equal to the
same model's own forward pass, on the tiny model."""

import pytest
import torch

from musicgpt.errors import ConfigError
from musicgpt.model.decode_step import Decoder
from musicgpt.model.precision import (Int8Decoder, Int8Linear, context_bytes, decoder_for, for_cpu_decoding,
                                      precision_of, weight_bytes)
from tiny_models import tiny_model

WINDOW, LENGTH = 24, 60  # the window slides 36 times


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def decode(model, ids: torch.Tensor, window: int) -> torch.Tensor:
    """Log-probs (T, V) of feeding ids (1, T) one token at a time through the model's decode step."""
    cache, decoder = model.new_cache(window=window), decoder_for(model)
    with torch.no_grad():
        return log_probs(torch.cat([decoder.step(ids[:, t], cache)[0] for t in range(ids.shape[1])]))


@pytest.fixture(autouse=True)
def one_thread():
    """Batch-1 decoding runs on one thread (generation's default): two threads on a busy 2-core box are 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    ids = torch.randint(3, 300, (1, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = log_probs(model(ids, window=WINDOW).logits[0])  # (T, V) float32
    return model, ids, reference


@pytest.mark.parametrize("precision, tol", [("bfloat16", 0.02), ("int8", 0.03)])
def test_lower_precision_stays_close_to_float32_and_decoding_equals_its_own_forward(setup, precision, tol):
    model, ids, reference = setup
    low = for_cpu_decoding(model, precision)
    assert precision_of(low) == precision and precision_of(model) == "float32"
    with torch.no_grad():
        full = log_probs(low(ids, window=WINDOW).logits[0])
    assert 1e-6 < (full - reference).abs().max() < tol  # rounded, not broken (measured: 0.003 bf16, 0.005 int8)
    steps = decode(low, ids, WINDOW)
    # int8 quantizes a forward pass's activations with one scale for all its tokens, a step token by token
    assert (steps - full).abs().max() < tol
    assert (steps - reference).abs().max() < tol


def test_int8_steps_equal_the_int8_model_fed_one_token_at_a_time(setup):
    """Token by token the forward pass quantizes the same activations as the step: the same int8 arithmetic."""
    model, ids, _ = setup
    low = for_cpu_decoding(model, "int8")
    assert isinstance(decoder_for(low), Int8Decoder) and decoder_for(low) is decoder_for(low)
    cache = low.new_cache(window=WINDOW)
    with torch.no_grad():
        one_by_one = log_probs(torch.cat([low(ids[:, t : t + 1], cache=cache).logits[0] for t in range(LENGTH)]))
    assert torch.allclose(decode(low, ids, WINDOW), one_by_one, atol=1e-4)
    cache = low.new_cache()
    with torch.no_grad():
        _, attention = decoder_for(low).step(ids[:, 0], cache, need_attention=True)
    assert len(attention) == model.config.n_layer and attention[0].shape == (1, model.config.n_head, 1)


def test_the_original_model_is_left_alone_and_bad_requests_are_refused(setup):
    model, ids, reference = setup
    assert for_cpu_decoding(model, "float32") is model
    low = for_cpu_decoding(model, "int8")
    assert isinstance(low.blocks[0].mlp.fc, Int8Linear) and isinstance(model.blocks[0].mlp.fc, torch.nn.Linear)
    assert type(decoder_for(model)) is Decoder
    with torch.no_grad():
        assert torch.equal(log_probs(model(ids, window=WINDOW).logits[0]), reference)
    with pytest.raises(ConfigError, match="precision 'float16': not one of float32, bfloat16, int8"):
        for_cpu_decoding(model, "float16")
    with pytest.raises(ConfigError, match="one sequence on one cache"):
        decoder_for(low).step(torch.tensor([5, 6]), low.new_cache())
    with pytest.raises(ConfigError, match="not int8"):
        Int8Decoder(model)


def test_bytes_read_per_token(setup):
    model = setup[0]
    cfg = model.config
    fp32, bf16, int8 = (weight_bytes(for_cpu_decoding(model, p)) for p in ("float32", "bfloat16", "int8"))
    matrices = cfg.n_layer * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_ff) + cfg.vocab_size * cfg.d_model
    assert fp32 > 4 * matrices and bf16 * 2 == fp32
    assert matrices < int8 < 1.5 * matrices  # one byte a weight, plus per-row scales, biases and LayerNorms
    assert context_bytes(model, 10) == 3 * cfg.n_layer * 10 * cfg.d_model * 4  # keys, values, relative table
