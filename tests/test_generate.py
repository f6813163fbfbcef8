"""PyTorch generation over the static cache, sampling, and training Tiny-LLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_reference import random_hf_model

from genapi import SamplingConfig, build_model, generate
from genapi.models import llama, load_weights, tiny_llm
from genapi.sampling import Sampler


@pytest.fixture(scope="module")
def llama_pair():
    hf_model = random_hf_model(llama.TINY, spread=0.3)
    config = llama.tiny_config()
    model = build_model(config).eval()
    load_weights(model, hf_model.state_dict(), llama.weight_table(config), num_layers=2)
    return hf_model, model


def test_greedy_generation_matches_transformers_generate(llama_pair):
    hf_model, model = llama_pair
    prompt = [5, 17, 99, 3, 42]
    ours = list(generate(model, prompt, max_new_tokens=12))
    with torch.no_grad():
        theirs = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )
    assert ours == theirs[0, len(prompt) :].tolist()


def test_generation_stops_on_a_stop_id(llama_pair):
    _, model = llama_pair
    free = list(generate(model, [1, 2, 3], max_new_tokens=8))
    stopped = list(generate(model, [1, 2, 3], max_new_tokens=8, stop_ids=[free[3]]))
    assert stopped == free[: free.index(free[3])]


def test_seeded_sampling_repeats_and_differs_from_greedy(llama_pair):
    _, model = llama_pair
    sampling = SamplingConfig(temperature=1.5, top_k=50, top_p=0.95, seed=3)
    first = list(generate(model, [1, 2, 3], max_new_tokens=16, sampling=sampling))
    again = list(generate(model, [1, 2, 3], max_new_tokens=16, sampling=sampling))
    greedy = list(generate(model, [1, 2, 3], max_new_tokens=16))
    assert first == again and first != greedy


def test_prompt_longer_than_the_cache_is_an_error(llama_pair):
    _, model = llama_pair
    with pytest.raises(ValueError, match="prompt of 6 tokens does not fit a KV cache of 4"):
        list(generate(model, [1] * 6, cache_len=4))


def test_top_k_and_top_p_restrict_the_candidates():
    logits = np.array([5.0, 4.0, 1.0, 0.0, -1.0])
    top_k = Sampler(SamplingConfig(temperature=1.0, top_k=2, seed=0))
    assert {top_k(logits) for _ in range(200)} == {0, 1}
    top_p = Sampler(SamplingConfig(temperature=1.0, top_p=0.5, seed=0))
    assert {top_p(logits) for _ in range(200)} == {0}
    with pytest.raises(ValueError, match="top_p=1.5"):
        SamplingConfig(top_p=1.5)


def test_tiny_llm_learns_a_repeating_sequence():
    config = tiny_llm.config()
    assert (config.d_model, config.num_layers, config.vocab_size, config.max_seq_len) == (
        128,
        2,
        5000,
        256,
    )
    torch.manual_seed(0)
    model = build_model(config).train()
    data = torch.arange(64).repeat(2)[None] * 7 % config.vocab_size  # [1, 128]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits, _ = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[0], data[0, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
