"""dictd dictionaries (FOLDOC, GCIDE) as benchmark worlds, through the shared writer.

Every stored definition is an entity; every `{cross-reference}` in it is a link whose anchor
is the braced text as written ("{shown (target)}" shows `shown` and links to `target`, as in
FOLDOC). References name entries rather than address them, so they are resolved as
`dictd.NameResolver` does for the FOLDOC world: exact name, then case, plural, and
hyphen/whitespace variants.

GCIDE's first line is `Headword \\Pro*nun"ci*a`tion\\, pos.`: the title is the index headword,
the pronunciation line stays part of the text. Its `[1913 Webster]`-style source notes are
provenance, not description, and are removed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

from zel_jax.data import dictd, zeshel
from zel_jax.data.worlds import pages

# World name -> dictd database name.
DATABASES = {"dict-foldoc": "foldoc", "dict-gcide": "gcide"}

# A note of where a definition (or a paragraph of it) came from: "[1913 Webster]", "[PJC]",
# "[Webster 1913 Suppl.]", "[WordNet 1.5]"; on a line of its own or inline.
_SOURCE_NOTE = re.compile(r"[ \t]*\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Chambers|Bouvier|"
                          r"RDH|Elementary)[^\]\n]*\]")


@dataclasses.dataclass
class _Named:
  # What dictd.NameResolver reads of an entry.
  title: str
  names: tuple[str, ...]


def _title(header: list[str], headwords: tuple[str, ...]) -> str:
  """The header's first line when it is a headword (FOLDOC), else the first headword."""
  if header and dictd.lookup_key(header[0]) in {dictd.lookup_key(h) for h in headwords}:
    return header[0]
  return headwords[0]


def _text_and_links(header: list[str], body: str, is_name) -> tuple[str, list[pages.Link]]:
  """Plain text (braces removed) and the references as links to the names they target."""
  parts: list[str] = ["\n".join(header), "\n"]
  length = sum(len(p) for p in parts)
  links: list[pages.Link] = []
  position = 0
  for match, shown, target, _ in dictd.references(body, is_name):
    before = body[position:match.start()]
    parts.append(before)
    length += len(before)
    position = match.end()
    parts.append(shown)
    # A URL target ("{RFC 822 (http://...)}") is a link to nothing in the world: the writer
    # counts it as unresolved.
    links.append(pages.Link(length, length + len(shown), target))
    length += len(shown)
  parts.append(body[position:])
  return "".join(parts), links


def read_pages(dictd_dir: pathlib.Path, name: str) -> tuple[list[pages.Page], object]:
  """The entries of one database as pages, and a resolver of reference names to page keys."""
  pages_out: list[pages.Page] = []
  named: list[_Named] = []
  used: set[str] = set()
  raw: list[tuple[list[str], str]] = []
  with dictd.DictdDatabase.open(dictd_dir, name) as database:
    for entry in database.entries():
      header, body = dictd.split_header(entry.text)
      title = _title(header, entry.headwords)
      key, k = title, 1
      while key in used:  # the same headword filed twice (a noun and a verb) stays two
        k += 1
        key = f"{title} ({k})"
      used.add(key)
      named.append(_Named(" ".join(zeshel.tokenize(title)),
                          tuple(dict.fromkeys([title, *header, *entry.headwords]))))
      raw.append((header, _SOURCE_NOTE.sub("", body)))
      pages_out.append(pages.Page(key=key, title=title, text=""))
  resolver = dictd.NameResolver(named)
  for page, (header, body) in zip(pages_out, raw):
    page.text, page.links = _text_and_links(header, body, resolver.is_name)

  def resolve(target: str) -> str | None:
    found = resolver.resolve(target)
    return pages_out[found[0]].key if found else None

  return pages_out, resolve


def build(root: pathlib.Path, world: str) -> pages.World:
  """The world of package `world` (dict-foldoc or dict-gcide) unpacked under `root`."""
  if world not in DATABASES:
    raise KeyError(f"no dictd database for world {world!r} (known: {sorted(DATABASES)})")
  found, resolve = read_pages(pathlib.Path(root) / "usr" / "share" / "dictd", DATABASES[world])
  return pages.build_world(world, found, resolve=resolve)
