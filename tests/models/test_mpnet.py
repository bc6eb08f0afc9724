"""MPNet as a variant of the Flax BERT: relative-position buckets computed by hand, and parity
with transformers' PyTorch MPNetModel on the real all-mpnet-base-v2 weights (installed by
the project's setup, see README)."""

import json

import numpy as np
import pytest

from zel_jax import workdir_io
from zel_jax.bench import zeroshot
from zel_jax.models import bert, bert_io

SENTENCES = [
    "Baibars besieged Antioch in 1268 and the city fell after a short siege; the chronicles "
    "of the period describe the fall in detail.",
    "FOLDOC",
    "The [unused0] mention [unused1] markers stay atomic.",
]


def test_relative_position_buckets_by_hand():
  # 32 buckets, max distance 128: 16 per direction, distances 0..7 exact, then buckets
  # 8 + floor(8 log(n / 8) / log(16)) up to 15; keys after the query add 16.
  buckets = bert.relative_position_buckets(200, 32, 128)
  key_before = {0: 0, 1: 1, 7: 7, 8: 8, 11: 8, 12: 9, 15: 9, 16: 10, 22: 10, 23: 11, 31: 11,
                32: 12, 45: 12, 46: 13, 63: 13, 64: 14, 90: 14, 91: 15, 127: 15, 128: 15,
                199: 15}
  for distance, bucket in key_before.items():
    assert buckets[distance, 0] == bucket, distance  # query `distance` after key 0
    assert buckets[0, distance] == (bucket + 16 if distance else 0), distance
  # Only the distance matters.
  assert buckets[150, 100] == buckets[50, 0] == 13
  assert buckets.shape == (200, 200) and buckets.min() == 0 and buckets.max() == 31


@pytest.fixture(scope="module")
def mpnet():
  path = bert_io.resolve_pretrained("all-mpnet-base-v2")
  model, params = bert_io.from_pretrained(path)
  return path, model, params


def test_config_read_from_the_checkpoint(mpnet):
  _, model, params = mpnet
  cfg = model.config
  assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (
      "mpnet", 12, 768, 30527)
  assert (cfg.type_vocab_size, cfg.relative_attention_buckets, cfg.pad_token_id) == (0, 32, 1)
  assert cfg.max_length == 512 and cfg.positions_after_padding
  assert params["relative_attention_bias"].shape == (32, 12)
  assert "token_type_embeddings" not in params


def test_parity_with_pytorch_mpnet(mpnet):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoTokenizer, MPNetModel  # pylint: disable=g-import-not-at-top

  path, model, params = mpnet
  enc = AutoTokenizer.from_pretrained(path)(SENTENCES, padding=True, return_tensors="np")
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
  lengths = mask.sum(1)
  assert len(set(lengths)) == 3 and (mask == 0).any(), "different lengths, with padding"
  ours = np.asarray(model.apply({"params": params}, ids, mask))
  reference = MPNetModel.from_pretrained(path).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long)
                       ).last_hidden_state.numpy()
  error = np.abs(ours - theirs)
  print(f"MPNet parity: max abs error {error.max():.3g} over all positions, "
        f"{error[mask.astype(bool)].max():.3g} over real tokens")
  assert error.max() <= 1e-4  # Padded positions too: padding takes the table's padding row.

  def mean_pool(hidden):  # all-mpnet-base-v2's pooling (1_Pooling/config.json): token mean
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  pooled_error = np.abs(mean_pool(ours) - mean_pool(theirs)).max()
  assert pooled_error <= 1e-4
  # The sentences differ: a pooled-embedding parity of near-identical vectors proves nothing.
  pooled = mean_pool(ours)
  assert np.abs(pooled[0] - pooled[1]).max() > 0.05


def test_relative_bias_matters(mpnet):
  """The bias table is read and used: zeroing it changes the hidden states."""
  path, model, params = mpnet
  tokenizer = bert_io.load_tokenizer(path)
  enc = tokenizer(SENTENCES[:1], return_tensors="np")
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
  out = np.asarray(model.apply({"params": params}, ids, mask))
  flat = dict(params, relative_attention_bias=np.zeros_like(params["relative_attention_bias"]))
  assert np.abs(np.asarray(model.apply({"params": flat}, ids, mask)) - out).max() > 1e-2
  # And the last layer computed for position 0 alone agrees with the full pass there.
  first = np.asarray(model.apply({"params": params}, ids, mask, first_token_only=True))
  np.testing.assert_allclose(first[:, 0], out[:, 0], atol=2e-5)


def test_featurizer_writes_mpnet_inputs(mpnet):
  """Rows in the checkpoint's own format: `<s>` and `</s>` around each text, `</s></s>`
  between the two texts of a pair (as its tokenizer's template writes them), `<pad>`
  padding, and BLINK's markers on the vocabulary's [unusedN] rows."""
  from zel_jax.data import features  # pylint: disable=g-import-not-at-top

  path, _, _ = mpnet
  featurizer = features.Featurizer.from_pretrained(path)
  tokenizer = featurizer.tokenizer
  assert (featurizer.cls_id, featurizer.sep_id, featurizer.pad_id) == (0, 2, 1)
  assert featurizer.pair_separators == 2
  assert (featurizer.mention_start_id, featurizer.mention_end_id,
          featurizer.entity_title_id) == tuple(tokenizer.convert_tokens_to_ids(
              ["[unused0]", "[unused1]", "[unused2]"]))
  title, text = "Antioch", "an ancient city on the Orontes"
  pair = featurizer.pair_features([title], [text], 24)
  expected = tokenizer(title, text)["input_ids"]  # The tokenizer's own pair template.
  np.testing.assert_array_equal(pair["input_ids"][0, :len(expected)], expected)
  assert (pair["input_ids"][0, len(expected):] == 1).all()
  np.testing.assert_array_equal(pair["attention_mask"][0], np.arange(24) < len(expected))
  entity = featurizer.entity_features([title], [text], 24)["input_ids"][0]
  pieces = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]
  expected = [0, *pieces(title), featurizer.entity_title_id, *pieces(text), 2]
  np.testing.assert_array_equal(entity, expected + [1] * (24 - len(expected)))


def test_checkpoint_pooling_read_from_the_sentence_transformers_config(mpnet, tmp_path):
  path, _, _ = mpnet
  assert bert_io.checkpoint_pooling(path) == "mean"
  assert bert_io.checkpoint_pooling(bert_io.resolve_pretrained("all-MiniLM-L6-v2")) == "mean"
  # The benchmark's untrained rows pool as their checkpoints define.
  untrained = [j for j in zeroshot.plan(zeroshot.Budget(), [0]) if j.kind == "untrained"]
  assert len(untrained) == 2
  for job in untrained:
    zeroshot.write_config(job, str(tmp_path / job.name), "data/worlds")
    config = workdir_io.load_config(str(tmp_path / job.name))
    model = bert_io.resolve_pretrained(config.model.pretrained)
    assert config.model.pooling == bert_io.checkpoint_pooling(model), job.name
  # A plain BERT folder declares none; a CLS checkpoint says so; two modes are refused.
  plain = tmp_path / "plain"
  plain.mkdir()
  assert bert_io.checkpoint_pooling(str(plain)) is None
  (plain / "1_Pooling").mkdir()
  config = plain / "1_Pooling" / "config.json"
  config.write_text(json.dumps({"pooling_mode_cls_token": True,
                                "pooling_mode_mean_tokens": False}))
  assert bert_io.checkpoint_pooling(str(plain)) == "cls"
  config.write_text(json.dumps({"pooling_mode_cls_token": True,
                                "pooling_mode_max_tokens": True}))
  with pytest.raises(ValueError, match="1_Pooling/config.json: pooling"):
    bert_io.checkpoint_pooling(str(plain))
