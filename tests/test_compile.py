"""torch.compile: no graph break in nertron's entry points, a bounded number of graphs under
``dynamic=True`` whatever the batch size, length and lengths pattern, and compiled results
equal to eager ones.

Graph breaks are counted by ``torch._dynamo.explain``; graphs by a counting backend
(``CompileCounterWithBackend('aot_eager')``: Dynamo, fake tensors, AOT autograd and the
custom ops' fake implementations and autograd formulas, without Inductor's C++ build), and
one test runs the real Inductor backend end to end.
"""
import random

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from nertron.bindings.crf import CRF, allowed_transitions, crf_span_log_probs
from nertron.bindings.pooling import LayerPooling, ScalarMix
from nertron.engine.bert import BertModel
from nertron.engine.config import BertConfig
from nertron.engine.models import MODEL_CLASSES

K = 9
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
# Dynamo specialises sizes 0 and 1: B == 1 and T == 1 each give a graph of their own, so over
# any mix of patterns an entry point compiles at most 2 x 2 graphs.
MAX_GRAPHS = 4


def breaks(fn, *args, **kwargs):
    """(graph breaks, graphs, reasons) of one call of ``fn`` under torch._dynamo.explain."""
    dynamo.reset()
    result = dynamo.explain(fn)(*args, **kwargs)
    return result.graph_break_count, result.graph_count, [str(r.reason).splitlines()[0] for r in result.break_reasons]


def assert_one_graph(fn, *args, **kwargs):
    count, graphs, reasons = breaks(fn, *args, **kwargs)
    assert (count, graphs) == (0, 1), reasons


def prefix_mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def patterns(count=24, seed=0):
    """``count`` (B, T, lengths) patterns: B and T from 1 up, lengths in [1, T], one full row."""
    rng = random.Random(seed)
    out = []
    for B in (1, 2, 3, 5, 8, 13):
        for T in (1, 4, 9, 17):
            lengths = [rng.randint(1, T) for _ in range(B)]
            lengths[rng.randrange(B)] = T
            out.append((B, T, lengths))
    return out[:count]


def crf_inputs(B=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(B, T, K, generator=g)
    tags = torch.randint(0, K, (B, T), generator=g)
    lengths = [T] + [max(1, T - 2 - i) for i in range(B - 1)]
    return em, tags, prefix_mask(lengths, T)


# ---------------------------------------------------------------------------- graph breaks
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_crf_entry_points_have_no_graph_break(backend, batch_first):
    crf = CRF(K, batch_first=batch_first, backend=backend, constraints=allowed_transitions(LABELS))
    em, tags, mask = crf_inputs()
    if not batch_first:
        em, tags, mask = em.transpose(0, 1), tags.t(), mask.t()
    em = em.requires_grad_()
    assert_one_graph(lambda e, t, m: crf(e, t, m, reduction="token_mean"), em, tags, mask)
    assert_one_graph(lambda e, t: crf(e, t), em, tags)
    assert_one_graph(lambda e, m: crf.decode(e, m, as_tensor=True), em, mask)
    assert_one_graph(crf.marginals, em, mask)
    spans = torch.tensor([[0, 0, 2], [1, 1, 1], [2, 0, 1]])
    assert_one_graph(crf.span_log_probs, em, tags, spans, mask)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_crf_span_log_probs_function_has_no_graph_break(backend):
    em, tags, mask = crf_inputs()
    crf = CRF(K)
    spans = torch.tensor([[0, 0, 5], [1, 2, 3], [2, 1, 1]])
    assert_one_graph(crf_span_log_probs, em, mask, tags, spans, crf.start_transitions, crf.end_transitions,
                     crf.transitions, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_pooling_modules_have_no_graph_break(backend):
    layers = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(4)]
    mask = prefix_mask([5, 3], 5)
    assert_one_graph(LayerPooling(3, backend=backend), layers)
    assert_one_graph(LayerPooling(3, mode="weighted", include_embeddings=True, backend=backend), layers)
    assert_one_graph(ScalarMix(4, backend=backend), layers)
    assert_one_graph(ScalarMix(4, do_layer_norm=True, backend=backend), layers, mask)


def tiny_bert(backend="torch"):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, type_vocab_size=2)
    return BertModel(config, backend=backend).eval()


def test_bert_forward_has_no_graph_break():
    bert = tiny_bert()
    ids = torch.randint(0, 60, (3, 7))
    mask = prefix_mask([7, 4, 1], 7).long()
    coef = torch.full((3,), 1 / 3)
    assert_one_graph(bert, ids, mask)
    assert_one_graph(lambda i, m: bert(i, m, output_hidden_states=True), ids, mask)
    assert_one_graph(lambda i, m: bert(i, m, torch.zeros_like(i), layer_mix=coef), ids, mask)


def test_fused_bert_forward_compiles_as_custom_ops():
    """backend='triton' (the GPU path; Triton's interpreter here): the kernels stay single
    nodes (unpacked layout under compile), no graph break, the reference's values."""
    bert, ref = tiny_bert("triton"), tiny_bert("torch")
    ids = torch.randint(0, 60, (3, 7))
    mask = prefix_mask([7, 4, 1], 7).long()
    coef = torch.full((3,), 1 / 3)
    with torch.no_grad():
        assert_one_graph(lambda i, m: bert(i, m, layer_mix=coef), ids, mask)
        dynamo.reset()
        got = torch.compile(lambda i, m: bert(i, m, layer_mix=coef), backend="aot_eager", dynamic=True)(ids, mask)
        want = ref(ids, mask, layer_mix=coef)
    real = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.layer_mix[real], want.layer_mix[real], rtol=1e-4, atol=1e-5)


def ner_batch(B=3, T=10, W=6):
    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(1000, 2000, (B, T), generator=g),
                 attention_mask=torch.ones(B, T, dtype=torch.long), token_type_ids=torch.zeros(B, T, dtype=torch.long),
                 word_index=torch.arange(1, W + 1).expand(B, W).clone(), word_mask=torch.ones(B, W, dtype=torch.bool),
                 labels=torch.randint(0, K, (B, W), generator=g), intents=torch.arange(B) % 3)
    batch["attention_mask"][1, 6:] = 0
    batch["word_mask"][1, 4:] = False
    batch["labels"][1, 4:] = -100
    return batch


@pytest.fixture(scope="module")
def ner_models(minilm_dir):
    models = {}
    for name, cls in sorted(MODEL_CLASSES.items()):
        torch.manual_seed(0)
        options = dict(labels=LABELS, enc_hidden_dim=32, num_heads=2, key_dim=16, val_dim=16, dec_embedding_dim=8,
                       dec_hidden_dim=32, casing="none")
        if cls.joint:
            options["intent_size"] = 3
        models[name] = cls.create(K, minilm_dir, **options)
    return models


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_model_forward_has_no_graph_break(name, ner_models):
    model = ner_models[name]
    batch = ner_batch()
    model.eval()
    with torch.no_grad():
        assert_one_graph(model, batch)  # inference: BERT with the fused layer mix, decode
    model.train()
    try:
        assert_one_graph(model, batch)  # training: loss (and decode), the layers stacked for pooling
    finally:
        model.eval()


@pytest.mark.parametrize("name", ["BertBiLSTMAttnCRF", "BertBiLSTMAttnNMTJoint"])
def test_compiled_model_equals_eager(name, ner_models):
    """The compiled forward (the BiLSTM as custom ops) gives eager's tags, loss and gradients."""
    model = ner_models[name].eval()
    batch = ner_batch()
    dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)
    want = model(batch)
    got = compiled(batch)
    assert torch.equal(got.tags, want.tags)
    torch.testing.assert_close(got.loss, want.loss)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lstm" in n]
    want_grads = torch.autograd.grad(want.loss, head)
    got_grads = torch.autograd.grad(got.loss, head)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- recompiles
def count_graphs(fn, calls, check):
    """Compile ``fn`` with dynamic shapes (``aot_eager``), run every ``calls`` entry,
    ``check(compiled out, eager out)``; returns how many distinct graphs Dynamo kept (a
    compilation that Dynamo restarts once to add a specialisation counts once)."""
    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled = torch.compile(fn, backend="aot_eager", dynamic=True)
    for args in calls:
        check(compiled(*args), fn(*args))
    return dynamo.utils.counters["stats"]["unique_graphs"]


def crf_calls(requires_grad=False):
    calls = []
    for B, T, lengths in patterns():
        g = torch.Generator().manual_seed(B * 100 + T)
        em = torch.randn(B, T, K, generator=g).requires_grad_(requires_grad)
        calls.append((em, torch.randint(0, K, (B, T), generator=g), prefix_mask(lengths, T)))
    return calls


def test_crf_graphs_are_bounded_over_lengths_patterns():
    crf = CRF(K, batch_first=True)
    calls = crf_calls(requires_grad=True)
    assert len(calls) >= 20

    def nll_check(got, want):
        torch.testing.assert_close(got, want)
        got.backward()

    assert count_graphs(lambda e, t, m: crf(e, t, m, reduction="mean"), calls, nll_check) <= MAX_GRAPHS

    def equal(got, want):
        assert all(torch.equal(a, b) for a, b in zip(got, want))

    decode = lambda e, t, m: crf.decode(e, m, as_tensor=True)  # noqa: E731
    assert count_graphs(decode, calls, equal) <= MAX_GRAPHS
    marginals = lambda e, t, m: crf.marginals(e, m)  # noqa: E731
    assert count_graphs(marginals, calls, torch.testing.assert_close) <= MAX_GRAPHS


def test_bert_and_pooling_graphs_are_bounded():
    bert = tiny_bert()
    calls = []
    for B, T, lengths in patterns():
        calls.append((torch.randint(0, 60, (B, T)), prefix_mask(lengths, T).long()))
    assert len(calls) >= 20

    def close(got, want):
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state)

    assert count_graphs(lambda i, m: bert(i, m), calls, close) <= MAX_GRAPHS
    pooling = LayerPooling(3)
    layer_calls = [([torch.randn(B, T, 8) for _ in range(4)],) for B, T, _ in patterns()]
    assert count_graphs(pooling, layer_calls, torch.testing.assert_close) <= MAX_GRAPHS


@pytest.mark.slow
def test_inductor_compiles_crf_once_for_every_pattern():
    """The real backend: one graph (plus its backward) for every pattern with B, T >= 2, values
    and gradients equal to eager, decode identical."""
    crf = CRF(K, batch_first=True)
    calls = [c for c in crf_calls(requires_grad=True) if c[0].shape[0] > 1 and c[0].shape[1] > 1][:6]
    dynamo.reset()
    counter = CompileCounterWithBackend("inductor")

    def step(e, t, m):
        return crf(e, t, m, reduction="sum"), crf.decode(e, m, as_tensor=True)

    compiled = torch.compile(step, backend=counter, dynamic=True)
    for em, tags, mask in calls:
        (loss, (paths, scores)) = compiled(em, tags, mask)
        (want_loss, (want_paths, want_scores)) = step(em, tags, mask)
        torch.testing.assert_close(loss, want_loss)
        assert torch.equal(paths, want_paths)
        got_grad, = torch.autograd.grad(loss, em)
        want_grad, = torch.autograd.grad(want_loss, em)
        torch.testing.assert_close(got_grad, want_grad)
    assert counter.frame_count == 1


def test_eager_checks_are_kept():
    """Outside torch.compile the host checks still give their one-line errors and pytorch-crf's
    fallbacks (tests/test_crf.py covers them in depth)."""
    crf = CRF(K, batch_first=True)
    em, tags, mask = crf_inputs()
    mask[0, 0] = False
    with pytest.raises(ValueError, match="mask of the first timestep must all be on"):
        crf(em, tags, mask)
    gapped = prefix_mask([6, 6, 6], 6)
    gapped[1, 2] = False
    with pytest.raises(ValueError, match="needs prefix masks"):
        crf.marginals(em, gapped)
    bert = tiny_bert()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bert(torch.tensor([[1, 99]]))
