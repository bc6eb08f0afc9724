"""EntQA: the retriever's and the reader's losses, the reader model, span decoding, merging."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zel_jax import losses
from zel_jax.models import bert, crossencoder
from zel_jax.recipes.entqa import model as entqa


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# -- retriever loss (Eq. 1) -----------------------------------------------------------------


def _nce_batch():
  rng = np.random.default_rng(0)
  b, g, n, d = 3, 3, 4, 5
  return dict(
      passage_emb=rng.normal(size=(b, d)).astype(np.float32),
      gold_emb=rng.normal(size=(b, g, d)).astype(np.float32),
      # Row 1 lists gold 3 twice: E(x) is a set. Row 2 is a padded passage.
      gold_ids=np.array([[5, 7, 0], [3, 3, 4], [1, 2, 3]]),
      gold_valid=np.array([[True, True, False], [True, True, True], [True, True, True]]),
      negative_emb=rng.normal(size=(b, n, d)).astype(np.float32),
      # Row 0: 7 is a gold, the second 9 a repeat, 11 a padding slot; 0 is the id of an
      # invalid gold slot, so it stays a negative. Row 1: 4 is a gold.
      negative_ids=np.array([[7, 9, 9, 0], [1, 2, 4, 6], [1, 2, 3, 4]]),
      negative_valid=np.array([[True, True, True, True], [True, True, True, False],
                               [True, True, True, True]]),
      valid=np.array([True, True, False]))


def _nce_by_hand(batch):
  x, golds, negs = batch["passage_emb"], batch["gold_emb"], batch["negative_emb"]
  s_gold = np.einsum("bd,bgd->bg", x, golds).astype(np.float64)
  s_neg = np.einsum("bd,bnd->bn", x, negs).astype(np.float64)
  kept = {0: [1, 3], 1: [0, 1]}           # negatives that count, per passage
  counted = {0: [0, 1], 1: [0, 2]}        # golds that count, per passage
  total = 0.0
  for row in (0, 1):
    denominator_negatives = np.exp(s_neg[row, kept[row]]).sum()
    for g in counted[row]:
      total += -s_gold[row, g] + np.log(np.exp(s_gold[row, g]) + denominator_negatives)
  return total / 2, s_gold, s_neg, kept


def test_multi_label_nce_by_hand():
  batch = _nce_batch()
  expected, s_gold, s_neg, _ = _nce_by_hand(batch)
  got = losses.multi_label_nce(**{k: jnp.asarray(v) for k, v in batch.items()})
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Not one softmax over all golds together (the reference's `sum_log`): that differs.
  together = -(_log_softmax(np.concatenate([s_gold[0, :2], s_neg[0, [1, 3]]]))[:2].sum()
               + _log_softmax(np.concatenate([s_gold[1, [0, 2]], s_neg[1, :2]]))[:2].sum()) / 2
  assert abs(together - expected) > 1e-2
  # Junk under every masked slot and in the padded passage changes nothing.
  junk = {k: v.copy() for k, v in batch.items()}
  junk["gold_emb"][0, 2] = 50.0
  junk["negative_emb"][0, 0] = junk["negative_emb"][0, 2] = 40.0
  junk["negative_emb"][1, 3] = 40.0
  junk["passage_emb"][2] = 100.0
  np.testing.assert_allclose(
      losses.multi_label_nce(**{k: jnp.asarray(v) for k, v in junk.items()}), expected,
      rtol=1e-5)


def test_multi_label_nce_keeps_other_golds_out_of_each_denominator():
  batch = _nce_batch()
  _, s_gold, s_neg, kept = _nce_by_hand(batch)
  args = {k: jnp.asarray(v) for k, v in batch.items()}

  def loss_of_golds(gold_emb):
    return losses.multi_label_nce(**{**args, "gold_emb": gold_emb})

  grad = np.asarray(jax.grad(loss_of_golds)(args["gold_emb"]))
  # Gold 0 of passage 0 sees only itself and the negatives: d/d gold = -(1 - p) x / 2,
  # p = e^{s_0} / (e^{s_0} + sum_n e^{s_n}), whatever gold 1 scores.
  p = np.exp(s_gold[0, 0]) / (np.exp(s_gold[0, 0]) + np.exp(s_neg[0, kept[0]]).sum())
  np.testing.assert_allclose(grad[0, 0], -(1 - p) * batch["passage_emb"][0] / 2, rtol=1e-4,
                             atol=1e-6)
  # Moving gold 1 leaves gold 0's gradient exactly as it was.
  moved = args["gold_emb"].at[0, 1].add(3.0)
  np.testing.assert_allclose(np.asarray(jax.grad(loss_of_golds)(moved))[0, 0], grad[0, 0],
                             rtol=1e-6)
  # Masked slots get no gradient: the invalid gold, the repeated gold, the padded passage.
  np.testing.assert_array_equal(grad[0, 2], 0.0)
  np.testing.assert_array_equal(grad[1, 1], 0.0)
  np.testing.assert_array_equal(grad[2], 0.0)


def test_multi_label_nce_with_every_negative_masked_is_zero_and_finite():
  batch = _nce_batch()
  batch["negative_valid"] = np.zeros_like(batch["negative_valid"])
  args = {k: jnp.asarray(v) for k, v in batch.items()}
  loss, grad = jax.value_and_grad(lambda x: losses.multi_label_nce(**{**args,
                                                                       "passage_emb": x}))(
                                                                           args["passage_emb"])
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  assert np.isfinite(np.asarray(grad)).all()


# -- reader loss (Eq. 2) --------------------------------------------------------------------


def _reader_batch():
  rng = np.random.default_rng(1)
  b, k, positions = 2, 3, 5  # L = 4
  start = rng.normal(size=(b, k, positions)).astype(np.float32)
  end = rng.normal(size=(b, k, positions)).astype(np.float32)
  rank = rng.normal(size=(b, k)).astype(np.float32)
  start_labels = np.zeros((b, k, positions), bool)
  end_labels = np.zeros((b, k, positions), bool)
  # Passage 0: candidate 0 is gold with two spans, (1, 2) and (4, 4); candidate 1 is not
  # gold (null span); slot 2 is empty, its labels junk.
  start_labels[0, 0, [1, 4]] = end_labels[0, 0, [2, 4]] = True
  start_labels[0, 1, 0] = end_labels[0, 1, 0] = True
  start_labels[0, 2, 3] = end_labels[0, 2, 3] = True
  # Passage 1 has 3 tokens: candidate 0 is not gold, 1 has (2, 3), 2 has (1, 1).
  start_labels[1, 0, 0] = end_labels[1, 0, 0] = True
  start_labels[1, 1, 2] = end_labels[1, 1, 3] = True
  start_labels[1, 2, 1] = end_labels[1, 2, 1] = True
  rank_labels = np.array([[True, False, True], [False, True, True]])
  span_mask = np.ones((b, k, positions), bool)
  span_mask[1, :, 4] = False
  candidate_valid = np.array([[True, True, False], [True, True, True]])
  return dict(start_logits=start, end_logits=end, rank_logits=rank,
              start_labels=start_labels, end_labels=end_labels, rank_labels=rank_labels,
              span_mask=span_mask, candidate_valid=candidate_valid)


def test_reader_loss_by_hand():
  batch = _reader_batch()
  s, e, r = batch["start_logits"], batch["end_logits"], batch["rank_logits"]
  ls0, le0 = _log_softmax(s[0]), _log_softmax(e[0])          # all 5 positions allowed
  ls1, le1 = _log_softmax(s[1, :, :4]), _log_softmax(e[1, :, :4])
  passage0 = (-(ls0[0, 1] + ls0[0, 4]) - (le0[0, 2] + le0[0, 4])   # two gold spans
              - ls0[1, 0] - le0[1, 0]                              # null for a non-gold
              - _log_softmax(r[0, :2])[0])                         # rerank over 2 slots
  passage1 = (-ls1[0, 0] - le1[0, 0] - ls1[1, 2] - le1[1, 3] - ls1[2, 1] - le1[2, 1]
              - _log_softmax(r[1])[1] - _log_softmax(r[1])[2])
  got = losses.reader_loss(**{k: jnp.asarray(v) for k, v in batch.items()})
  np.testing.assert_allclose(got, (passage0 + passage1) / 2, rtol=1e-5)
  got = losses.reader_loss(**{k: jnp.asarray(v) for k, v in batch.items()},
                           valid=jnp.array([True, False]))
  np.testing.assert_allclose(got, passage0, rtol=1e-5)
  # Masked positions and the empty slot take any logits without changing the loss.
  junk = {k: v.copy() for k, v in batch.items()}
  junk["start_logits"][1, :, 4] = 30.0
  junk["end_logits"][0, 2] = 30.0
  junk["rank_logits"][0, 2] = 30.0
  np.testing.assert_allclose(
      losses.reader_loss(**{k: jnp.asarray(v) for k, v in junk.items()}),
      (passage0 + passage1) / 2, rtol=1e-5)


# -- decoding -------------------------------------------------------------------------------


def test_top_spans_is_the_best_of_the_band():
  rng = np.random.default_rng(2)
  k_cand, positions, max_span, k = 3, 9, 3, 6
  start = rng.normal(size=(k_cand, positions)).astype(np.float32) * 3
  end = rng.normal(size=(k_cand, positions)).astype(np.float32) * 3
  mask = np.ones((k_cand, positions), bool)
  mask[1, 6:] = False            # a short passage
  mask[2, 3:] = False            # two tokens: fewer spans than k
  start[1, 6:] = end[1, 6:] = 50.0  # masked positions must never win
  got = jax.jit(entqa.top_spans, static_argnums=(3, 4))(start, end, mask, max_span, k)
  scores, starts, ends, null = map(np.asarray, got)
  assert scores.shape == starts.shape == ends.shape == (k_cand, k)
  for c in range(k_cand):
    ls = _log_softmax(np.where(mask[c], start[c], -1e9))
    le = _log_softmax(np.where(mask[c], end[c], -1e9))
    band = sorted(((ls[a] + le[b], a, b) for a, b in itertools.product(range(positions), repeat=2)
                   if 1 <= a <= b < a + max_span and mask[c, a] and mask[c, b]), reverse=True)
    n = min(k, len(band))
    np.testing.assert_allclose(scores[c, :n], [x[0] for x in band[:n]], rtol=1e-5, atol=1e-5)
    assert {(a, b) for _, a, b in band[:n]} == set(zip(starts[c, :n], ends[c, :n]))
    assert np.all(np.isneginf(scores[c, n:]))
    np.testing.assert_allclose(null[c], ls[0] + le[0], rtol=1e-5)
  assert len([1 for a in range(1, 3) for b in range(a, 3)]) < k  # candidate 2 is padded


def _decode_inputs():
  """Hand-made top_spans output for 4 candidates (k = 6), spans best first."""
  neg = -np.inf
  spans = [
      # c0: (2,2) lies inside (2,3); (4,4) is below the null (-2.1).
      [((2, 3), -1.0), ((2, 2), -1.2), ((5, 6), -1.5), ((1, 1), -2.0), ((4, 4), -2.2),
       ((0, 0), neg)],
      # c1: the null (-0.1) beats every span.
      [((1, 2), -0.5), ((3, 3), -0.6), ((0, 0), neg), ((0, 0), neg), ((0, 0), neg),
       ((0, 0), neg)],
      # c2: partly overlapping spans are both kept; (3, 4) inside (2, 4) is not.
      [((2, 4), -0.5), ((3, 5), -0.6), ((3, 4), -0.7), ((0, 0), neg), ((0, 0), neg),
       ((0, 0), neg)],
      # c3: an empty slot, spans above its null notwithstanding.
      [((1, 1), -0.1), ((0, 0), neg), ((0, 0), neg), ((0, 0), neg), ((0, 0), neg),
       ((0, 0), neg)],
  ]
  scores = np.array([[s for _, s in row] for row in spans])
  starts = np.array([[a for (a, _), _ in row] for row in spans])
  ends = np.array([[b for (_, b), _ in row] for row in spans])
  null = np.array([-2.1, -0.1, -5.0, -3.0])
  rank = np.log(np.array([0.5, 0.2, 0.3, 1e-9]))
  return scores, starts, ends, null, rank


def test_decode_spans_stops_at_the_null_and_filters_nested_spans():
  scores, starts, ends, null, rank = _decode_inputs()
  valid = np.array([True, True, True, False])
  got = entqa.decode_spans(scores, starts, ends, null, rank, top_p=3, candidate_valid=valid)
  expected = [(0, 2, 3, 0.5 * np.exp(-1.0)), (0, 5, 6, 0.5 * np.exp(-1.5)),
              (0, 1, 1, 0.5 * np.exp(-2.0)), (2, 2, 4, 0.3 * np.exp(-0.5)),
              (2, 3, 5, 0.3 * np.exp(-0.6))]
  expected.sort(key=lambda p: -p[3])
  assert [p[:3] for p in got] == [p[:3] for p in expected]
  np.testing.assert_allclose([p[3] for p in got], [p[3] for p in expected], rtol=1e-9)
  # top_p caps each candidate; nested=True keeps (2, 2) and (3, 4).
  got = entqa.decode_spans(scores, starts, ends, null, rank, top_p=2, candidate_valid=valid)
  assert sorted(p[:3] for p in got) == [(0, 2, 3), (0, 5, 6), (2, 2, 4), (2, 3, 5)]
  got = entqa.decode_spans(scores, starts, ends, null, rank, top_p=3, nested=True,
                           candidate_valid=valid)
  assert sorted(p[:3] for p in got) == [(0, 2, 2), (0, 2, 3), (0, 5, 6), (2, 2, 4), (2, 3, 4),
                                        (2, 3, 5)]
  # Without candidate_valid the empty slot would answer: the mask is what removes it.
  assert (3, 1, 1) in [p[:3] for p in entqa.decode_spans(scores, starts, ends, null, rank)]


def test_top_spans_then_decode_respects_the_band():
  """From logits to answers: every answer is in the band, a null-favouring candidate says
  nothing, and score = p_rerank * p_start * p_end."""
  rng = np.random.default_rng(3)
  positions, max_span = 12, 3
  start = rng.normal(size=(4, positions)).astype(np.float32)
  end = rng.normal(size=(4, positions)).astype(np.float32)
  start[:, 0] = end[:, 0] = -5.0
  start[1, 0] = end[1, 0] = 8.0     # candidate 1 prefers the null span
  start[0, 2], end[0, 9] = 9.0, 9.0  # a long span (2, 9) that max_span forbids
  mask = np.ones((4, positions), bool)
  mask[3, 8:] = False
  rank_lp = np.asarray(entqa.masked_log_softmax(jnp.asarray(rng.normal(size=4)), None))
  scores, starts, ends, null = map(np.asarray, entqa.top_spans(start, end, mask, max_span, 12))
  got = entqa.decode_spans(scores, starts, ends, null, rank_lp, top_p=3)
  assert got and all(c != 1 for c, *_ in got)
  per_candidate = {}
  for c, j0, j1, score in got:
    assert 1 <= j0 <= j1 < j0 + max_span and mask[c, j1]
    p_start = np.exp(_log_softmax(np.where(mask[c], start[c], -1e9)))
    p_end = np.exp(_log_softmax(np.where(mask[c], end[c], -1e9)))
    np.testing.assert_allclose(score, np.exp(rank_lp[c]) * p_start[j0] * p_end[j1], rtol=1e-5)
    assert p_start[j0] * p_end[j1] >= p_start[0] * p_end[0]
    per_candidate[c] = per_candidate.get(c, 0) + 1
  assert max(per_candidate.values()) <= 3


# -- merging --------------------------------------------------------------------------------


def test_merge_predictions():
  preds = [("d1", 0, 4, "A", 0.3), ("d1", 0, 4, "A", 0.7),   # two overlapping passages
           ("d1", 10, 15, "B", 0.4), ("d1", 10, 15, "C", 0.6),  # one span, two entities
           ("d2", 0, 4, "A", 0.2)]                             # another document
  assert entqa.merge_predictions(preds) == [("d1", 0, 4, "A", 0.7), ("d1", 10, 15, "C", 0.6),
                                            ("d2", 0, 4, "A", 0.2)]
  assert entqa.merge_predictions(preds, one_entity_per_span=False) == [
      ("d1", 0, 4, "A", 0.7), ("d1", 10, 15, "B", 0.4), ("d1", 10, 15, "C", 0.6),
      ("d2", 0, 4, "A", 0.2)]
  # Gamma comes after the merge: a span read weakly once and strongly once survives 0.5.
  assert [p for p in entqa.merge_predictions(preds) if p[4] > 0.5] == [
      ("d1", 0, 4, "A", 0.7), ("d1", 10, 15, "C", 0.6)]


# -- the reader model -----------------------------------------------------------------------


def _tiny_config():
  return bert.BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_position_embeddings=32,
                         hidden_dropout=0.0, attention_dropout=0.0)


def test_reader_shapes_params_and_one_sgd_step_lowers_its_loss():
  model = entqa.Reader(_tiny_config())
  b, k, t, length = 2, 3, 12, 5
  rng = np.random.default_rng(4)
  ids = jnp.asarray(rng.integers(1, 50, size=(b, k, t)), jnp.int32)
  mask = jnp.ones_like(ids)
  types = jnp.zeros_like(ids).at[..., length + 2:].set(1)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, mask, types, length)["params"])
  # The encoder subtree is a CrossEncoder's: a trained one copies in.
  assert set(params) == {"encoder", "span", "rank"}
  cross = crossencoder.abstract_params(crossencoder.CrossEncoder(_tiny_config()))["encoder"]
  assert (jax.tree.map(lambda x: x.shape, nn.meta.unbox(cross))
          == jax.tree.map(lambda x: x.shape, params["encoder"]))
  assert nn.meta.unbox(entqa.abstract_params(model))["span"]["kernel"].shape == (16, 2)

  apply = jax.jit(model.apply, static_argnums=(4,))
  start, end, rank = apply({"params": params}, ids, mask, types, length)
  assert start.shape == end.shape == (b, k, length + 1) and rank.shape == (b, k)
  assert start.dtype == jnp.float32
  eager = model.apply({"params": params}, ids, mask, types, length)
  np.testing.assert_allclose(start, eager[0], rtol=1e-5, atol=1e-6)
  # passage_length only chooses how many positions are read.
  longer = apply({"params": params}, ids, mask, types, length + 3)
  np.testing.assert_allclose(longer[0][..., :length + 1], start, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(longer[2], rank, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="passage_length 12"):
    model.apply({"params": params}, ids, mask, types, t)

  labels = np.zeros((b, k, length + 1), bool)
  labels[:, 1:, 0] = True       # candidates 1, 2: null
  labels[0, 0, 2] = labels[1, 0, 4] = True
  span_mask = np.ones((b, k, length + 1), bool)
  span_mask[1, :, 5] = False
  rank_labels = np.array([[True, False, False], [True, False, False]])

  def loss_fn(p):
    s, e, r = model.apply({"params": p}, ids, mask, types, length)
    return losses.reader_loss(s, e, r, jnp.asarray(labels), jnp.asarray(labels),
                              jnp.asarray(rank_labels), jnp.asarray(span_mask))

  before, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  stepped = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
  after = jax.jit(loss_fn)(stepped)
  assert np.isfinite(before) and after < before - 1e-3, (before, after)
