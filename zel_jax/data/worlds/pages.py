"""The writer every world builder shares: pages with links -> a ZESHEL-layout world.

A builder (one module per source format: dictd, HTML, Vim help, POD, man pages) reads a
package's documentation into `Page`s: an entity candidate with a key, a title, its text with
markup removed, and the links inside that text as character spans pointing at other keys.
`build_world` turns pages into ZESHEL entities and mentions the same way for every format:

- a page with an empty title or text is not an entity (counted); two pages with the same key,
  or the same title and text, are one entity (the later one's keys become aliases);
- the text is tokenized in ZESHEL's convention (`zeshel.tokenize`) piece by piece, so that a
  link's anchor is always whole tokens, and the mention is the anchor **as written**;
- a link is resolved through the page keys and aliases (and a builder's own `resolve`, for
  formats whose references are names rather than addresses); links to nothing in the world,
  to the page itself, with an empty anchor or overlapping an earlier link are dropped and
  counted;
- the mention's category is ZESHEL's, from the anchor and the gold entity's title.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Any, Callable, Iterable, Sequence

from zel_jax.data import zeshel


@dataclasses.dataclass(frozen=True)
class Link:
  """A hyperlink or cross-reference: `text[start:end]` of its page is the anchor as written."""
  start: int
  end: int
  target: str


@dataclasses.dataclass
class Page:
  """One entity candidate of a source.

  key      the address links use (a path with a fragment, a help tag, `name(section)`, ...)
  title    the entity's name as the source shows it
  text     plain text, markup removed; anchors appear in it as written
  links    spans of `text` with the key (or name) each points at
  aliases  other keys that lead to this page (anchors inside it, alternative names)
  """
  key: str
  title: str
  text: str
  links: list[Link] = dataclasses.field(default_factory=list)
  aliases: tuple[str, ...] = ()


def entity_id(world: str, key: str) -> str:
  # ZESHEL ids are 16 upper-case hex digits; the world is part of the hash so that ids stay
  # unique across the worlds of one benchmark.
  return hashlib.sha1(f"{world}\x00{key}".encode("utf-8")).hexdigest()[:16].upper()


def _tokens_and_spans(text: str, links: Sequence[Link], counts: collections.Counter
                      ) -> tuple[list[str], list[tuple[int, int, Link]]]:
  """ZESHEL tokens of `text` and the (first, last) token of each kept link."""
  tokens: list[str] = []
  spans: list[tuple[int, int, Link]] = []
  position = 0
  for link in sorted(links, key=lambda l: (l.start, l.end)):
    if not 0 <= link.start <= link.end <= len(text):
      raise ValueError(f"link {link} lies outside a text of {len(text)} characters")
    if link.start < position:
      counts["links_overlapping"] += 1
      continue
    tokens += zeshel.tokenize(text[position:link.start])
    words = zeshel.tokenize(text[link.start:link.end])
    if not words:
      counts["links_empty_anchor"] += 1
    else:
      spans.append((len(tokens), len(tokens) + len(words) - 1, link))
    tokens += words
    position = link.end
  tokens += zeshel.tokenize(text[position:])
  return tokens, spans


@dataclasses.dataclass
class World:
  """A built world: entities (file order), every mention (unsplit) and its counts."""
  name: str
  entities: list[zeshel.Entity]
  mentions: list[zeshel.Mention]
  stats: dict[str, Any]


def build_world(world: str, pages: Iterable[Page],
                resolve: Callable[[str], str | None] | None = None,
                top_unresolved: int = 20) -> World:
  """Entities and mentions of one world from its pages (see the module docstring).

  `resolve(target)` maps a link target that is not a key or alias to a key (None: dropped);
  formats whose links are addresses leave it out.
  """
  counts: collections.Counter = collections.Counter()
  kept: list[Page] = []
  by_key: dict[str, int] = {}
  by_content: dict[tuple[str, str], int] = {}
  for page in pages:
    counts["pages"] += 1
    title = " ".join(zeshel.tokenize(page.title))
    if not title or not zeshel.normalize_whitespace(page.text):
      counts["pages_empty"] += 1
      continue
    if page.key in by_key:
      counts["pages_duplicate_key"] += 1
      continue
    content = (title, zeshel.normalize_whitespace(page.text))
    if content in by_content:
      # The same entity reachable under another address (a copy, a symlink): one entity.
      counts["pages_duplicate_content"] += 1
      by_key[page.key] = by_content[content]
      for alias in page.aliases:
        by_key.setdefault(alias, by_content[content])
      continue
    by_content[content] = len(kept)
    by_key[page.key] = len(kept)
    kept.append(page)
  # Aliases never take a key a page owns; among aliases the first page wins.
  for i, page in enumerate(kept):
    for alias in page.aliases:
      by_key.setdefault(alias, i)

  entities: list[zeshel.Entity] = []
  rendered: list[tuple[list[str], list[tuple[int, int, Link]]]] = []
  for page in kept:
    tokens, spans = _tokens_and_spans(page.text, page.links, counts)
    rendered.append((tokens, spans))
    entities.append(zeshel.Entity(entity_id(world, page.key),
                                  " ".join(zeshel.tokenize(page.title)), " ".join(tokens),
                                  world))

  mentions: list[zeshel.Mention] = []
  unresolved: collections.Counter = collections.Counter()
  categories: collections.Counter = collections.Counter()
  for i, (tokens, spans) in enumerate(rendered):
    for start, end, link in spans:
      counts["links"] += 1
      label = by_key.get(link.target)
      if label is None and resolve is not None:
        resolved = resolve(link.target)
        label = by_key.get(resolved) if resolved is not None else None
      if label is None:
        unresolved[link.target] += 1
        continue
      if label == i:
        # A link from an entity to itself teaches nothing: the context is the description.
        counts["links_to_self"] += 1
        continue
      anchor = " ".join(tokens[start:end + 1])
      category = zeshel.category_of(anchor, entities[label].title)
      categories[category] += 1
      mentions.append(zeshel.Mention(
          mention_id=entity_id(world, f"{kept[i].key}\x00{start}\x00{end}"),
          context_document_id=entities[i].document_id,
          label_document_id=entities[label].document_id,
          start_index=start, end_index=end, text=anchor, corpus=world, category=category))

  lengths = [len(e.text.split()) for e in entities]
  total = len(mentions)
  stats = {
      "world": world,
      "pages": counts["pages"],
      "entities": len(entities),
      "pages_empty": counts["pages_empty"],
      "pages_duplicate_key": counts["pages_duplicate_key"],
      "pages_duplicate_content": counts["pages_duplicate_content"],
      "mean_entity_tokens": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
      "links": counts["links"] + counts["links_overlapping"] + counts["links_empty_anchor"],
      "mentions": total,
      "links_dropped": {
          "unresolved": sum(unresolved.values()),
          "to_self": counts["links_to_self"],
          "empty_anchor": counts["links_empty_anchor"],
          "overlapping": counts["links_overlapping"],
      },
      "categories": {c: categories[c] for c in zeshel.CATEGORIES},
      "category_share": {c: round(categories[c] / total, 4) if total else 0.0
                         for c in zeshel.CATEGORIES},
      "top_unresolved": [[t, n] for t, n in unresolved.most_common(top_unresolved)],
  }
  return World(world, entities, mentions, stats)
