"""The model, the KV-cached decoder and generation on a CUDA device (skipped where there is none)."""

import pytest
import torch

from musicgpt.model.gpt import GPTConfig, MusicGPT
from tiny_models import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_train_step_on_cuda_matches_the_cpu():
    cpu = tiny_model().train()  # strong relative embeddings: a wrong skew on the GPU shows
    gpu = MusicGPT(cpu.config).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randint(0, 391, (2, 200), generator=torch.Generator().manual_seed(1))
    outs = []
    for model, ids in ((cpu, x), (gpu, x.cuda())):
        out = model(ids[:, :-1], targets=ids[:, 1:])
        out.loss.backward()
        outs.append((out.logits.detach().cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=2e-4, rtol=2e-4)
    for name, g in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], g, atol=2e-4, rtol=2e-3, msg=name)


def test_decoder_on_cuda_matches_the_full_forward_while_the_window_slides():
    from musicgpt.model.decode_step import Decoder

    torch.manual_seed(0)
    model = MusicGPT(GPTConfig.preset("tiny", dropout=0.0)).cuda().eval()
    x = torch.randint(0, 391, (2, 150), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    with torch.no_grad():
        full = model(x, window=24).logits
        cache = model.new_cache(window=24, capacity=30)
        parts = [model(x[:, :5], cache=cache).logits]
        decoder = Decoder(model)
        parts += [decoder.step(x[:, t], cache)[0][:, None] for t in range(5, 150)]
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


def test_generate_with_the_bundled_model_on_cuda():
    import musicgpt

    samples = musicgpt.generate(max_new_tokens=48, seed=0, num_samples=2, arcs=True, device="cuda", stop_at_eos=False)
    assert [s.n_generated for s in samples] == [48, 48]
    assert all(s.arcs is not None for s in samples)
