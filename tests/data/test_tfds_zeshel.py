"""The TFDS builder on the real excerpt: array_record, read back without TensorFlow."""

import importlib.util
import json
import shutil
import sys

import pytest

from zel_jax.data import tfds_zeshel
from zel_jax.data import zeshel


@pytest.fixture
def excerpt(shared_data):
  return shared_data / "zeshel_excerpt"


def test_tensorflow_is_not_installed():
  # The point of this path: tfds prepares and reads array_record with TF absent.
  assert importlib.util.find_spec("tensorflow") is None


def test_build_and_read_back_equal_the_reader(excerpt, tmp_path):
  builders = tfds_zeshel.build(excerpt, tmp_path / "tfds")
  assert "tensorflow" not in sys.modules
  reader = zeshel.ZeshelDataset(excerpt)

  mention_splits = set(builders["mentions"].info.splits)
  assert mention_splits == {"mentions_sample"}
  entity_splits = set(builders["entities"].info.splits)
  assert entity_splits == {f"entities_{w}" for w in reader.worlds()}
  files = sorted(p.name for p in (tmp_path / "tfds").rglob("*.array_record-*"))
  assert len(files) == 1 + len(reader.worlds())

  source = tfds_zeshel.data_source(tmp_path / "tfds", "mentions_sample")
  expected = list(reader.iter_mentions("sample"))
  assert len(source) == len(expected) == 4
  # File order is kept, so record i is line i.
  assert [tfds_zeshel.to_mention(source[i]) for i in range(len(source))] == expected

  for world in reader.worlds():
    source = tfds_zeshel.data_source(tmp_path / "tfds", f"entities_{world}")
    records = [tfds_zeshel.to_entity(source[i]) for i in range(len(source))]
    assert records == list(reader.iter_entities(world))


def test_missing_category_round_trips_as_none(excerpt, tmp_path):
  root = tmp_path / "zeshel"
  shutil.copytree(excerpt, root)
  path = root / "mentions" / "sample.json"
  lines = path.read_text().splitlines()
  record = json.loads(lines[0])
  del record["category"]
  lines[0] = json.dumps(record)
  path.write_text("\n".join(lines) + "\n")
  tfds_zeshel.Zeshel(config="mentions", data_dir=str(tmp_path / "tfds")).download_and_prepare(
      download_config=tfds_zeshel.tfds.download.DownloadConfig(manual_dir=str(root)))
  source = tfds_zeshel.data_source(tmp_path / "tfds", "mentions_sample")
  assert tfds_zeshel.to_mention(source[0]).category is None
  assert tfds_zeshel.to_mention(source[1]).category == "LOW_OVERLAP"


def test_invalid_directory_fails_preparation(excerpt, tmp_path):
  root = tmp_path / "zeshel"
  shutil.copytree(excerpt, root)
  path = root / "mentions" / "sample.json"
  lines = path.read_text().splitlines()
  lines[1] = json.dumps({**json.loads(lines[1]), "label_document_id": "NOPE"})
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(zeshel.ZeshelFormatError, match=r"sample\.json:2: field 'label_document_id'"):
    tfds_zeshel.build(root, tmp_path / "tfds")


def test_split_names():
  assert tfds_zeshel.split_name("entities", "pro-wrestling") == "entities_pro_wrestling"
  with pytest.raises(ValueError, match="neither"):
    tfds_zeshel.data_source("/nonexistent", "train")
