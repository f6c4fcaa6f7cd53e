"""The Hugging Face-style ways in: set_seed, pipeline(), state_dict_summary, embedding plots from Python."""

import numpy as np

import musicgpt
from musicgpt.model.inspect import embedding_arrays, module_tree, state_dict_rows
from musicgpt.viz.embeddings import plot_embeddings
from tiny_models import PRIMER, tiny_checkpoint, tiny_model


def test_a_pipeline_is_called_like_a_function_and_set_seed_makes_it_repeat(tmp_path):
    gen = musicgpt.pipeline(tiny_checkpoint(tmp_path / "ckpt"))
    musicgpt.set_seed(42)
    first = gen(PRIMER, primer_seconds=2, max_new_tokens=24, num_return_sequences=3)
    musicgpt.set_seed(42)
    again = gen(PRIMER, primer_seconds=2, max_new_tokens=24, num_return_sequences=3)
    assert len(first) == 3 and first[0].seed == again[0].seed
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(first, again))
    musicgpt.set_seed(43)
    assert gen(PRIMER, primer_seconds=2, max_new_tokens=24)[0].seed != first[0].seed
    greedy = [gen(PRIMER, primer_seconds=2, max_new_tokens=24, do_sample=False)[0].ids for _ in range(2)]
    assert np.array_equal(*greedy)  # temperature 0: no randomness at all
    assert "GenerationPipeline(2 layers" in repr(gen)


def test_state_dict_summary_and_module_tree_list_every_tensor():
    model = tiny_model()
    rows = state_dict_rows(model)
    assert [r["name"] for r in rows] == list(model.state_dict())
    tied = [r for r in rows if r["tied_to"]]
    assert [(r["name"], r["tied_to"]) for r in tied] == [("lm_head.weight", "tok_emb.weight")]
    text = musicgpt.state_dict_summary(model)
    assert "blocks.1.attn.rel_emb" in text and "[2, 32, 16]" in text and "tied to tok_emb.weight" in text
    assert module_tree(model)[0].startswith("model (MusicGPT)")


def test_the_embedding_plots_are_reachable_from_python(tmp_path):
    tok = musicgpt.PerformanceTokenizer()
    arrays = embedding_arrays(tiny_model(), note_on_ids=tok.note_on(np.arange(128)))
    assert len(arrays["relative"]) == 2 and arrays["relative"][0].shape == (2, 32, 16)
    assert arrays["note_on"].shape == (128, 32) and arrays["positions"] is None
    written = plot_embeddings(arrays, tmp_path / "plots")
    assert [p.name for p in written] == ["relative_embeddings_layer0.png", "relative_embeddings_layer1.png",
                                         "note_on_similarity.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
