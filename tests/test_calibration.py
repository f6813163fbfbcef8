"""Calibrated quantization (genapi.export.calibrate): smoothing keeps the float function,
error-compensating rounding stays on the writer's grid and lowers the output error, and a
calibrated file stores exactly the calibrated integers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_export import _model

import genapi
from genapi.evaluation import default_text as eval_text
from genapi.evaluation import reference_logits
from genapi.export import calibrate as cal
from genapi.export.llm import export_llm
from genapi.export.quantize import (
    PartQuant,
    int4_blockwise_asymmetric,
    int8_per_channel,
    recipe,
    simulate,
    stored_weight,
)
from genapi.runtime import LiteRTGenerator

CACHE_LEN = 64


def _ids(vocab: int, n: int, seed: int = 3) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, size=n)]


def _load(model, weights):
    model = copy.deepcopy(model)
    model.load_state_dict(weights)
    return model


def test_calibration_text_is_packaged_and_separate_from_the_evaluation_text():
    text = cal.default_text()
    assert len(text.split()) > 400
    eval_sentences = {s.strip() for s in eval_text().split(".") if len(s.split()) > 4}
    assert not any(s.strip() in eval_sentences for s in text.split("."))


def test_smoothing_keeps_the_float_model():
    model = _model("llama")
    ids = _ids(model.config.vocab_size, 48)
    options = cal.CalibrationOptions(smooth_alpha=0.5, gptq=False)
    weights = cal.calibrate(model, recipe("dynamic_int8"), ids, options)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, weights[n])]
    assert any("norm" in n for n in changed) and any("v_proj" in n for n in changed)
    assert any("up_proj" in n for n in changed) and any("down_proj" in n for n in changed)
    got = reference_logits(_load(model, weights), ids)
    want = reference_logits(model, ids)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    # Weight-only recipes compute with float activations, and int4 blocks are too coarse to
    # take the activations' range: nothing to smooth.
    for quantize in ("weight_only_int8", "dynamic_int4"):
        weights = cal.calibrate(model, recipe(quantize), ids, options)
        assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters()), quantize


@pytest.mark.parametrize("part", [PartQuant("int8"), PartQuant("int4", True, 32, True)])
def test_gptq_rounding_stays_on_the_grid_and_lowers_the_output_error(part):
    rng = np.random.default_rng(0)
    # Correlated inputs with a few large channels, as language models have.
    x = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))
    x[:, :3] *= 8
    w = rng.standard_normal((48, 64)).astype(np.float32)
    h = torch.from_numpy(x.T @ x)
    grid = cal._grid(w, part)
    rounded = cal.gptq_round(torch.from_numpy(w), h, grid).numpy()
    # Round-to-nearest of the result gives back the result: the writer stores these values.
    np.testing.assert_allclose(stored_weight(rounded, part), rounded, rtol=0, atol=1e-6)
    if part.scheme == "int8":
        np.testing.assert_array_equal(int8_per_channel(rounded)[1], int8_per_channel(w)[1])
    else:
        np.testing.assert_array_equal(
            int4_blockwise_asymmetric(rounded, 32)[1], int4_blockwise_asymmetric(w, 32)[1]
        )

    def error(v):
        return np.linalg.norm(x @ (v - w).T)

    assert error(rounded) < 0.8 * error(stored_weight(w, part))


@pytest.mark.parametrize("quantize", ["weight_only_int8", "dynamic_int8", "dynamic_int4"])
def test_calibrated_file_stores_the_calibrated_weights(tmp_path, quantize):
    """Converted from a meta model with streamed weights: the file computes with exactly the
    calibrated weights (weight-only: equal to PyTorch on them; dynamic: close, as the hybrid
    kernels also quantize activations)."""
    model = _model("llama")
    quant = recipe(quantize)
    calibration = _ids(model.config.vocab_size, 96, seed=5)
    weights = cal.calibrate(model, quant, calibration)
    calibrated = _load(model, weights)
    path = export_llm(
        genapi.build_model(model.config, device="meta"),
        tmp_path / "m.tflite",
        prefill_lengths=(8,),
        kv_cache_len=CACHE_LEN,
        prefill_logits=True,
        quantize=quantize,
        weights=dict(model.named_parameters()),
        calibration=calibration,
    )
    ids = _ids(model.config.vocab_size, 40)
    got = LiteRTGenerator(path).logits(ids)
    want = reference_logits(simulate(copy.deepcopy(calibrated), quant), ids)
    # simulate() re-rounds the calibrated weights: they come back unchanged.
    np.testing.assert_allclose(want, reference_logits(calibrated, ids), rtol=0, atol=1e-4)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < (1e-5 if quantize == "weight_only_int8" else 0.06)
