"""A BERT config and featurizer from config.model.pretrained, and one BERT's pretrained
parameters read into their shardings (the vocabulary grown for new marker tokens)."""

from __future__ import annotations

import jax

from zel_jax.data import features as features_lib
from zel_jax.models import bert, bert_io


def bert_and_featurizer(config) -> tuple[bert.BertConfig, features_lib.Featurizer]:
  """The BERT config of config.model.pretrained (dropouts from config.model, the vocabulary
  grown when the markers are new tokens) and its featurizer."""
  path = bert_io.resolve_pretrained(config.model.pretrained)
  featurizer = features_lib.Featurizer(bert_io.load_tokenizer(path),
                                       use_unused_markers=config.data.use_unused_markers)
  bert_config = bert_io.load_config(path).replace(
      hidden_dropout=config.model.hidden_dropout,
      attention_dropout=config.model.attention_dropout,
      pair_separators=featurizer.pair_separators)  # The tokenizer's template decides.
  if featurizer.vocab_size > bert_config.vocab_size:
    bert_config = bert_config.replace(vocab_size=featurizer.vocab_size)
  return bert_config, featurizer


def pretrained_bert(config, bert_config: bert.BertConfig, shardings, rng):
  """One BERT's parameters from config.model.pretrained, read into `shardings`; when the
  vocabulary grew, the marker rows are appended (drawn from rng: the same on every
  process)."""
  path = bert_io.resolve_pretrained(config.model.pretrained)
  checkpoint_vocab = bert_io.load_config(path).vocab_size
  tower = bert.BertModel(bert_config.replace(vocab_size=checkpoint_vocab))
  if bert_config.vocab_size == checkpoint_vocab:
    return bert_io.load_params(path, tower, shardings=shardings)
  grown = bert_io.grow_embeddings(bert_io.load_params(path, tower), bert_config.vocab_size, rng)
  return jax.device_put(grown, shardings)


# Encoder sizes by name, for configs whose checkpoint is not on this machine (BERT paper).
STANDARD_BERT = {
    "bert-base-uncased": dict(),
    "bert-large-uncased": dict(hidden_size=1024, num_layers=24, num_heads=16,
                               intermediate_size=4096),
}


def encoder_config(name: str) -> bert.BertConfig:
  """The BERT config of a packaged or local checkpoint, or of a standard size by name
  (shapes only: bench memory measures steps of models whose weights are not here)."""
  if name in STANDARD_BERT:
    return bert.BertConfig(**STANDARD_BERT[name])
  return bert_io.load_config(bert_io.resolve_pretrained(name))
