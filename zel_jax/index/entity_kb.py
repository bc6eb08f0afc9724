"""A knowledge base one can link to and change: its entities (id, title, text), the vectors
the retriever computed for them, and the candidate store searched over those vectors.

Adding entities needs only the new entities' vectors and removing needs none: the store is
rebuilt from the vectors already held (an exact store is the vector table itself; ScaNN
retrains its partitions, seconds at 100k entities), so the rest of the knowledge base is
never re-encoded. With MVD's views an entity has several vectors; `owners` gives the entity
row of each vector (one vector per entity, owners = rows, for a plain retriever).

On disk (`save`, atomic: a crash leaves the old folder or the new one):
  kb.json        counts, dimension, views, store kind and parameters
  entities.jsonl one {"document_id", "title", "text"} per entity, in row order
  vectors.npy    [R, D] float32       owners.npy  [R] int64 (entity row of each vector)
  store/         the candidate store, for kinds that take longer to rebuild than to read
                 (ScaNN); exact and device stores are rebuilt from vectors.npy on load
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from zel_jax import index as index_lib
from zel_jax.index import base, views as views_lib

KB_MANIFEST = "kb.json"
STORE_KINDS = ("exact", "scann", "device")


class EntityKB:
  """Entities, their vectors and the store over them. `store_kind`: exact, scann or
  device (device needs `mesh`)."""

  def __init__(self, ids: Sequence[str], titles: Sequence[str], texts: Sequence[str],
               vectors: np.ndarray, owners: np.ndarray | None = None, views: str = "global",
               store_kind: str = "exact", mesh: Any = None, store: Any = None):
    if store_kind not in STORE_KINDS:
      raise ValueError(f"store kind {store_kind!r}: one of {STORE_KINDS}")
    self.ids = [str(i) for i in ids]
    self.titles, self.texts = list(titles), list(texts)
    if not len(self.ids) == len(self.titles) == len(self.texts):
      raise ValueError(f"{len(self.ids)} ids, {len(self.titles)} titles and "
                       f"{len(self.texts)} texts")
    self._check_unique(self.ids)
    self.vectors = base.check_embeddings(vectors)
    self.owners = (np.arange(len(self.ids), dtype=np.int64) if owners is None
                   else np.asarray(owners, np.int64))
    if len(self.owners) != len(self.vectors):
      raise ValueError(f"{len(self.owners)} owners for {len(self.vectors)} vectors")
    if len(self.owners) and (self.owners.min() < 0 or self.owners.max() >= len(self.ids)):
      raise ValueError(f"owners must be entity rows in [0, {len(self.ids)})")
    self.views, self.store_kind, self.mesh = views, store_kind, mesh
    self._row = {doc_id: i for i, doc_id in enumerate(self.ids)}
    self.store = store if store is not None else self._build_store()

  @staticmethod
  def _check_unique(ids: Sequence[str]) -> None:
    seen = set()
    for i in ids:
      if i in seen:
        raise ValueError(f"entity id {i!r} appears twice")
      seen.add(i)

  def __len__(self) -> int:
    return len(self.ids)

  def row_of(self, doc_id: str) -> int | None:
    return self._row.get(doc_id)

  def _build_store(self):
    name = {"exact": "numpy"}.get(self.store_kind, self.store_kind)
    cls = index_lib.store_class(name)
    ids = None if self.views == "global" else self.owners
    if name == "device":
      return cls.build(self.vectors, ids, mesh=self.mesh)
    return cls.build(self.vectors, ids)

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k entity rows of each query, best first (each entity once, at its best view)."""
    k = min(k, len(self.ids))
    if self.views == "global":
      return self.store.search(queries, k)
    return views_lib.search_entities(self.store, queries, k, num_entities=len(self.ids))

  # ------------------------------------------------------------------------- changes

  def add(self, ids: Sequence[str], titles: Sequence[str], texts: Sequence[str],
          vectors: np.ndarray, owners: np.ndarray | None = None) -> None:
    """Appends entities; `owners` numbers the new vectors' entities 0..len(ids)-1 (None:
    one vector each). An id already held is an error (remove it first to replace it)."""
    ids = [str(i) for i in ids]
    self._check_unique(ids)
    held = [i for i in ids if i in self._row]
    if held:
      raise ValueError(f"entities already in the knowledge base: {held[:5]}"
                       f"{' ...' if len(held) > 5 else ''} (remove them first to replace)")
    vectors = base.check_embeddings(vectors)
    if vectors.shape[1] != self.vectors.shape[1]:
      raise ValueError(f"new vectors have dimension {vectors.shape[1]}, the knowledge base "
                       f"{self.vectors.shape[1]}")
    owners = (np.arange(len(ids)) if owners is None else np.asarray(owners, np.int64))
    first = len(self.ids)
    self.ids += ids
    self.titles += list(titles)
    self.texts += list(texts)
    self.vectors = np.concatenate([self.vectors, vectors])
    self.owners = np.concatenate([self.owners, owners + first])
    self._row.update({doc_id: first + i for i, doc_id in enumerate(ids)})
    self.store = self._build_store()

  def remove(self, ids: Sequence[str]) -> None:
    """Drops entities and their vectors; an id not held is an error."""
    ids = [str(i) for i in ids]
    unknown = [i for i in ids if i not in self._row]
    if unknown:
      raise KeyError(f"entities not in the knowledge base: {unknown[:5]}")
    drop = np.zeros(len(self.ids), bool)
    drop[[self._row[i] for i in ids]] = True
    if drop.all():
      raise ValueError("removing every entity would leave an empty knowledge base")
    new_row = np.cumsum(~drop) - 1  # Old entity row -> new row, for the kept ones.
    keep_vectors = ~drop[self.owners]
    self.vectors = self.vectors[keep_vectors]
    self.owners = new_row[self.owners[keep_vectors]]
    kept = np.flatnonzero(~drop)
    self.ids = [self.ids[i] for i in kept]
    self.titles = [self.titles[i] for i in kept]
    self.texts = [self.texts[i] for i in kept]
    self._row = {doc_id: i for i, doc_id in enumerate(self.ids)}
    self.store = self._build_store()

  # ------------------------------------------------------------------------- files

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the knowledge base, atomically replacing what `directory` held."""
    with base.atomic_directory(directory) as tmp:
      self.write_into(tmp)

  def write_into(self, directory: pathlib.Path) -> None:
    """Writes the files into an existing empty folder (the caller makes it atomic)."""
    with open(directory / "entities.jsonl", "w") as f:
      for doc_id, title, text in zip(self.ids, self.titles, self.texts):
        f.write(json.dumps({"document_id": doc_id, "title": title, "text": text}) + "\n")
    np.save(directory / "vectors.npy", self.vectors, allow_pickle=False)
    np.save(directory / "owners.npy", self.owners, allow_pickle=False)
    if self.store_kind == "scann":
      self.store.save(directory / "store")
    with open(directory / KB_MANIFEST, "w") as f:
      json.dump({"entities": len(self.ids), "vectors": int(len(self.vectors)),
                 "dim": int(self.vectors.shape[1]), "views": self.views,
                 "store": self.store_kind}, f, indent=2, sort_keys=True)
      f.write("\n")

  @classmethod
  def load(cls, directory: str | os.PathLike, store_kind: str | None = None,
           mesh: Any = None) -> "EntityKB":
    """Reads a saved knowledge base (store_kind: another kind of store than the saved one,
    built from the vectors)."""
    directory = pathlib.Path(directory)
    manifest_path = directory / KB_MANIFEST
    if not manifest_path.is_file():
      raise FileNotFoundError(f"{directory} holds no knowledge base: {KB_MANIFEST} is missing")
    with open(manifest_path) as f:
      manifest = json.load(f)
    ids, titles, texts = [], [], []
    path = directory / "entities.jsonl"
    with open(path) as f:
      for number, line in enumerate(f, 1):
        try:
          record = json.loads(line)
          ids.append(record["document_id"])
          titles.append(record["title"])
          texts.append(record["text"])
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: malformed JSON: {e.msg}") from None
        except KeyError as e:
          raise ValueError(f"{path}:{number}: field {e}: missing") from None
    vectors = np.load(directory / "vectors.npy", allow_pickle=False)
    owners = np.load(directory / "owners.npy", allow_pickle=False)
    if (len(ids), len(vectors)) != (manifest["entities"], manifest["vectors"]):
      raise ValueError(f"{directory}: {len(ids)} entities and {len(vectors)} vectors, "
                       f"{KB_MANIFEST} says {manifest['entities']} and {manifest['vectors']}")
    kind = store_kind or manifest["store"]
    store = None
    if kind == "scann" and manifest["store"] == "scann":
      store = index_lib.load_store(directory / "store")
    return cls(ids, titles, texts, vectors, owners, manifest["views"], kind, mesh, store)
