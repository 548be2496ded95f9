"""Frozen contexts, measured gains, Jacobian products and identification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from steercontrol.concepts import probe_readout
from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.identify import identify, identify_pooled, orthonormalize, time_invariant
from steercontrol.linearize import Linearization
from steercontrol.prefix import FrozenContext
from steercontrol.sensitivity import injection_sizes, measure_gains
from steercontrol.testing import TINY_FAMILIES, planted_linear_model, tiny_model


def _random_setup(model, seed=0):
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((model.n_layers + 1, model.hidden_size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions, probe_readout(rng.standard_normal(model.hidden_size))


def _planted(rank=3, n_layers=8, hidden=16, seed=0):
    model, matrices, subspace = planted_linear_model(n_layers=n_layers, hidden_size=hidden, rank=rank, seed=seed)
    rng = np.random.default_rng(seed)
    directions = (subspace.numpy() @ rng.standard_normal((subspace.shape[1], n_layers + 1))).T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    weight = rng.standard_normal(hidden)
    return model, matrices, directions, weight


def _analytic_gains(matrices, directions, weight):
    gains = []
    for layer in range(len(matrices)):
        state = torch.as_tensor(directions[layer])
        for matrix in matrices[layer:]:
            state = matrix @ state
        gains.append(float(torch.as_tensor(weight) @ state))
    return np.array(gains)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefix_path_equals_full_recomputation(family):
    model = tiny_model(family)
    ids = model.tokenize("frozen context")["input_ids"][0]
    with torch.no_grad():
        full = model.model(input_ids=ids[None]).logits[:, -1]
        last = FrozenContext(model, ids).run_last(3).logits[:, -1]
    assert torch.allclose(last, full.expand(3, -1), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_block_function_reproduces_next_state(family):
    model = tiny_model(family)
    ids = model.tokenize("abcdefghijkl")["input_ids"][0]
    context = FrozenContext(model, ids)
    with torch.no_grad():
        for layer in range(model.n_layers - 1):
            produced = context.block_function(layer)(context.block_input(layer)[None])[0]
            assert torch.allclose(produced, context.block_input(layer + 1), atol=1e-5)


def test_frozen_context_rejects_batch(tiny_llama):
    with pytest.raises(ShapeError, match="one context"):
        FrozenContext(tiny_llama, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("method", ["naive", "batched", "adjoint"])
def test_planted_gains_equal_analytic(method):
    model, matrices, directions, weight = _planted(rank=None if method == "naive" else 3)
    gains = measure_gains(
        model, model.tokenize("xyz")["input_ids"][0], directions, probe_readout(weight), method=method
    )
    assert np.allclose(gains.gains, _analytic_gains(matrices, directions, weight), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_equals_naive(family):
    model = tiny_model(family)
    directions, readout = _random_setup(model)
    ids = model.tokenize("the batched path")["input_ids"][0]
    naive = measure_gains(model, ids, directions, readout, method="naive").gains
    batched = measure_gains(model, ids, directions, readout, method="batched").gains
    assert np.allclose(batched, naive, atol=2e-3 * np.abs(naive).max())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_adjoint_matches_small_eps(family):
    model = tiny_model(family)
    directions, readout = _random_setup(model)
    ids = model.tokenize("adjoint check")["input_ids"][0]
    adjoint = measure_gains(model, ids, directions, readout, method="adjoint").gains
    finite = measure_gains(model, ids, directions, readout, method="batched", eps=1e-3).gains
    assert np.allclose(adjoint, finite, atol=2e-2 * np.abs(adjoint).max())
    assert spearmanr(adjoint, finite)[0] >= 0.99


def test_relative_eps_scales_with_state_norm():
    sizes = injection_sizes(0.1, "relative", np.array([2.0, 10.0]))
    assert np.allclose(sizes, [0.2, 1.0])


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_eps_rejected(tiny_llama, eps):
    directions, readout = _random_setup(tiny_llama)
    ids = tiny_llama.tokenize("abc")["input_ids"][0]
    with pytest.raises(ConfigurationError, match="Invalid eps"):
        measure_gains(tiny_llama, ids, directions, readout, eps=eps)


def test_invalid_method_rejected(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    with pytest.raises(ConfigurationError, match="naive.*batched.*adjoint"):
        measure_gains(tiny_llama, torch.tensor([1, 2]), directions, readout, method="sweep")


def test_wrong_direction_shape_rejected(tiny_llama):
    _, readout = _random_setup(tiny_llama)
    with pytest.raises(ShapeError, match="directions must be"):
        measure_gains(tiny_llama, torch.tensor([1, 2]), np.ones((4, 7)), readout)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_forward_jvp_matches_central(family):
    model = tiny_model(family)
    context = FrozenContext(model, model.tokenize("jvp check")["input_ids"][0])
    tangents = torch.randn(5, model.hidden_size, generator=torch.Generator().manual_seed(0))
    forward = Linearization(context, method="forward").apply(1, tangents)
    central = Linearization(context, method="central", step=1e-3).apply(1, tangents)
    assert torch.allclose(forward, central, atol=5e-3 * float(forward.abs().max()))


def test_planted_recovery_low_order():
    model, matrices, directions, weight = _planted(rank=3)
    ids = model.tokenize("planted")["input_ids"][0]
    identified = identify(model, ids, directions, probe_readout(weight), order=3)
    predicted = identified.surrogate.gain_profile()
    measured = measure_gains(model, ids, directions, probe_readout(weight), method="batched").gains
    assert max(b.shape[1] for b in identified.bases) == 3
    assert np.max(np.abs(predicted - measured) / np.abs(measured).max()) <= 1e-6


def test_reachable_basis_exact_at_full_order(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    ids = tiny_llama.tokenize("exact linear gains")["input_ids"][0]
    predicted = identify(tiny_llama, ids, directions, readout, order=8).surrogate.gain_profile()
    adjoint = measure_gains(tiny_llama, ids, directions, readout, method="adjoint").gains
    assert np.allclose(predicted, adjoint, atol=1e-4 * np.abs(adjoint).max())


@pytest.mark.parametrize("basis", ["krylov", "random"])
def test_other_bases_have_requested_order(tiny_llama, basis):
    directions, readout = _random_setup(tiny_llama)
    ids = tiny_llama.tokenize("bases")["input_ids"][0]
    identified = identify(tiny_llama, ids, directions, readout, order=4, basis=basis)
    assert all(b.shape[1] == 4 for b in identified.bases)
    for b in identified.bases:
        assert np.allclose(b.T @ b, np.eye(4), atol=1e-8)


def test_pooled_of_one_context_equals_single(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    ids = tiny_llama.tokenize("pooled")["input_ids"][0]
    single = identify(tiny_llama, ids, directions, readout, order=8).surrogate.gain_profile()
    pooled = identify_pooled(tiny_llama, [ids, ids], directions, readout, order=8).surrogate.gain_profile()
    assert np.allclose(single, pooled, rtol=1e-5)


def test_time_invariant_exports_statespace(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    ids = tiny_llama.tokenize("lti")["input_ids"][0]
    fitted = time_invariant(identify(tiny_llama, ids, directions, readout, order=8))
    system = fitted.to_statespace()
    assert system.dt == 1
    assert fitted.gain_profile().shape == (tiny_llama.n_layers,)


def test_time_invariant_gain_refinement_lowers_error(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    identified = identify(tiny_llama, tiny_llama.tokenize("lti refine")["input_ids"][0], directions, readout, order=8)
    mean_fit = time_invariant(identified)
    refined = time_invariant(identified, refine="gains")
    assert refined.metadata["fit"]["method"] == "mean_then_gain_least_squares"
    assert refined.metadata["fit"]["gain_error"] < mean_fit.metadata["fit"]["gain_error"]
    assert np.allclose(refined.A, mean_fit.A)


def test_order_above_hidden_size_rejected(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    with pytest.raises(ConfigurationError, match="order=64 exceeds the hidden size 32"):
        identify(tiny_llama, torch.tensor([1, 2, 3]), directions, readout, order=64)


def test_orthonormalize_drops_dependent_columns():
    columns = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    basis = orthonormalize(columns, 3)
    assert basis.shape == (3, 2)


def test_krylov_basis_reaches_full_order(tiny_llama):
    directions, readout = _random_setup(tiny_llama)
    ids = tiny_llama.tokenize("krylov order")["input_ids"][0]
    identified = identify(tiny_llama, ids, directions, readout, order=24, basis="krylov")
    assert all(b.shape[1] == 24 for b in identified.bases)
    first = identified.bases[1]
    assert np.isclose(abs(first[:, 0] @ directions[1]), 1.0, atol=1e-8)


@pytest.mark.parametrize("basis", ["krylov", "reachable"])
def test_truncation_equals_lower_order_identify(tiny_llama, basis):
    directions, readout = _random_setup(tiny_llama)
    context = FrozenContext(tiny_llama, tiny_llama.tokenize("nested bases")["input_ids"][0])
    full = identify(tiny_llama, context, directions, readout, order=12, basis=basis).surrogate
    for order in (1, 2, 4, 8):
        lower = identify(tiny_llama, context, directions, readout, order=order, basis=basis).surrogate
        truncated = full.truncated(order)
        assert truncated.state_dims == lower.state_dims
        assert np.allclose(truncated.gain_profile(), lower.gain_profile(), atol=1e-6)


def test_random_basis_truncation_differs(tiny_llama):
    # Random bases are not nested; this is why truncation is documented for Krylov and reachable only.
    directions, readout = _random_setup(tiny_llama)
    context = FrozenContext(tiny_llama, tiny_llama.tokenize("nested bases")["input_ids"][0])
    full = identify(tiny_llama, context, directions, readout, order=12, basis="random").surrogate
    lower = identify(tiny_llama, context, directions, readout, order=4, basis="random").surrogate
    assert not np.allclose(full.truncated(4).gain_profile(), lower.gain_profile(), atol=1e-6)


@pytest.mark.parametrize("order", [0, -1, 2.5, True])
def test_truncated_rejects_bad_order(tiny_llama, order):
    directions, readout = _random_setup(tiny_llama)
    surrogate = identify(tiny_llama, torch.tensor([1, 2, 3]), directions, readout, order=4).surrogate
    with pytest.raises(ConfigurationError, match="order must be a positive integer"):
        surrogate.truncated(order)
