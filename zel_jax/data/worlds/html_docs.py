"""HTML documentation (Sphinx, rustdoc, DocBook, asciidoc, ...) as a ZESHEL-layout world.

One machinery for every HTML site; what differs between sites is a small `Site` profile in
`html_sites` (where the pages are, the content root, the boilerplate, the anchored items).
For each page file (sorted, `.gz` read through gzip):

- a redirect stub (`<meta http-equiv="refresh">`) or a symlink to another page is no entity:
  its key becomes an alias of the page it leads to; pages in another language are skipped;
- the content root is cut down (boilerplate dropped) and anchored items are carved out of it:
  a Python function (`dt` + `dd`), an Apache directive section, a documented Rust method are
  entities of their own, and their text is no longer part of the page's;
- each entity's text is rendered from its elements (block elements on lines of their own,
  `<pre>` as written, whitespace collapsed elsewhere) with every `<a href>` as a link span;
- keys are paths relative to the site's doc root (`library/os.path.html`), an item's key adds
  its id (`library/os.path.html#os.path.join`); every other id inside an entity is an alias of
  it, so a link to `page.html#some-section` reaches the page or the item holding that id, and a
  fragment that names nothing falls back to the page;
- an entity whose words are mostly anchor text (an index, a table of contents), or a page left
  with nothing but its heading once its items are carved out, is dropped (and counted).

The counts of what was skipped (redirects, symlinks, other languages, mostly links, ...) are
in `world.stats["html"]`.

`build(root, world)` reads the package(s) extracted under `root` with the profile `SITES[world]`.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import fnmatch
import gzip
import os
import pathlib
import posixpath
import re
import urllib.parse
from typing import Callable, Iterator

import lxml.etree
import lxml.html

from zel_jax.data.worlds import html_sites
from zel_jax.data.worlds import pages
from zel_jax.data.worlds.html_sites import SITES, Item, Site

# Elements that start and end a line of text; everything else flows inline.
BLOCK_TAGS = frozenset(
    "address article aside blockquote body caption center dd details dialog dir div dl dt "
    "fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr li main menu "
    "nav ol p pre section summary table tbody tfoot thead tr ul br title".split())
CELL_TAGS = frozenset({"td", "th"})
# Never text: scripts, styles, form controls, pictures (their alt text is "next", "up", ...).
SKIP_TAGS = frozenset(
    "script style noscript template head img svg math button input select textarea iframe "
    "object embed map area canvas audio video".split())
MAX_LINK_SHARE = 0.6
MAX_REDIRECT_HOPS = 8
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_SPACES = re.compile(r"\s+")
_LOOSE_WHITESPACE = re.compile(
    r"^\s+|\s+$|(?P<blank>[ \t\xa0]*\n\s*\n)|[ \t\xa0]+(?=\n)")


@dataclasses.dataclass
class _Rendered:
  text: str
  links: list[pages.Link]
  ids: list[str]


class _Renderer:
  """Plain text of some elements, with the `<a href>` spans and the ids met on the way.

  Elements that belong to another entity (`owner_of` maps them to it) are skipped with their
  subtree, but their tail text stays: it is outside them.
  """

  def __init__(self, owner_of: dict, owner: Item | None, unlinked: set,
               link_target: Callable[[str], str | None]):
    self.owner_of = owner_of
    self.owner = owner
    self.unlinked = unlinked
    self.link_target = link_target
    self.chunks: list[str] = []
    self.size = 0
    self.last = "\n"
    self.pending_space = False
    self.spans: list[tuple[int, int, str]] = []
    self.ids: list[str] = []

  def _emit(self, text: str) -> None:
    self.chunks.append(text)
    self.size += len(text)
    self.last = text[-1]

  def add(self, text: str | None, pre: bool) -> None:
    if not text:
      return
    if pre:
      if self.pending_space and self.last not in " \n":
        self._emit(" ")
      self.pending_space = False
      self._emit(text)
      return
    collapsed = _SPACES.sub(" ", text)
    if collapsed.startswith(" "):
      self.pending_space = True
      collapsed = collapsed[1:]
    if not collapsed:
      return
    if self.pending_space and self.last not in " \n":
      self._emit(" ")
    self.pending_space = collapsed.endswith(" ")
    self._emit(collapsed.rstrip(" "))

  def space(self) -> None:
    self.pending_space = True

  def strip_trailing_space(self) -> None:
    """Drops the whitespace a <pre> ends with (its last line break belongs to the block)."""
    while self.chunks and self.chunks[-1] != self.chunks[-1].rstrip():
      last = self.chunks.pop()
      stripped = last.rstrip()
      self.size -= len(last) - len(stripped)
      if stripped:
        self.chunks.append(stripped)
        break
    self.last = self.chunks[-1][-1] if self.chunks else "\n"
    # Spans close in order, so only the last ones can reach past the new end.
    i = len(self.spans) - 1
    while i >= 0 and self.spans[i][1] > self.size:
      start, _, target = self.spans[i]
      self.spans[i] = (min(start, self.size), self.size, target)
      i -= 1

  def newline(self) -> None:
    self.pending_space = False
    if self.last != "\n":
      self._emit("\n")

  def walk(self, element, pre: bool = False, top: bool = False) -> None:
    tag = element.tag
    if isinstance(tag, str) and not (top or self.owner_of.get(element, self.owner)
                                     is self.owner):
      pass  # carved out: another entity's text
    elif isinstance(tag, str) and tag not in SKIP_TAGS:
      for name in ("id", "name") if tag == "a" else ("id",):
        value = element.get(name)
        if value:
          self.ids.append(value)
      block = tag in BLOCK_TAGS
      if block:
        self.newline()
      elif tag in CELL_TAGS:
        self.space()
      inside_pre = pre or tag in ("pre", "listing", "xmp", "plaintext")
      target = None
      if tag == "a" and element.get("href") is not None and element not in self.unlinked:
        target = self.link_target(element.get("href"))
      start = self.size
      self.add(element.text, inside_pre)
      for child in element:
        self.walk(child, inside_pre)
      if target is not None:
        self.spans.append((start, self.size, target))
      if tag == "pre":
        self.strip_trailing_space()
      if block:
        self.newline()
      elif tag in CELL_TAGS:
        self.space()
    if not top:
      self.add(element.tail, pre)

  def result(self) -> _Rendered:
    whole = "".join(self.chunks)
    # Whitespace at the ends and before a line break goes, blank lines (from <pre>) shrink to
    # one; link offsets move with the text.
    edits = [(m.start(), m.end(), "\n\n" if m.lastgroup == "blank" else "")
             for m in _LOOSE_WHITESPACE.finditer(whole)]
    starts = [start for start, _, _ in edits]
    shift = [0]
    for start, end, replacement in edits:
      shift.append(shift[-1] + end - start - len(replacement))

    def moved(position: int) -> int:
      i = bisect.bisect_right(starts, position) - 1
      if i < 0:
        return position
      start, end, _ = edits[i]
      return start - shift[i] if position < end else position - shift[i + 1]

    pieces, position = [], 0
    for start, end, replacement in edits:
      pieces += [whole[position:start], replacement]
      position = end
    text = "".join(pieces) + whole[position:]
    links = []
    for start, end, target in self.spans:
      start, end = moved(start), moved(end)
      while start < end and text[start].isspace():
        start += 1
      while end > start and text[end - 1].isspace():
        end -= 1
      links.append(pages.Link(start, end, target))
    return _Rendered(text, links, self.ids)


def read_html(path: pathlib.Path) -> lxml.html.HtmlElement | None:
  """The document of an HTML file (gzipped or not); UTF-8 unless the bytes say otherwise."""
  data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  if not data.strip():
    return None
  try:
    data.decode("utf-8")
    parser = lxml.html.HTMLParser(encoding="utf-8")
  except UnicodeDecodeError:
    parser = lxml.html.HTMLParser()
  try:
    return lxml.html.document_fromstring(data, parser=parser)
  except (lxml.etree.ParserError, ValueError):
    return None


def _redirect_url(document) -> str | None:
  """The address of a `<meta http-equiv="refresh" content="0; url=...">` (`url=` optional)."""
  for meta in document.iter("meta"):
    if (meta.get("http-equiv") or "").lower() == "refresh":
      _, _, address = (meta.get("content") or "").partition(";")
      address = address.strip()
      if address[:4].lower() == "url=":
        address = address[4:].strip()
      address = address.strip("'\"")
      if address:
        return address
  return None


def resolve_href(href: str, page_key: str, doc_root: str) -> str | None:
  """The key an href names, seen from the page `page_key`; outside addresses unchanged."""
  parts = urllib.parse.urlsplit(href.strip())
  if parts.scheme and parts.scheme != "file":
    return None if parts.scheme == "javascript" else href.strip()
  path = urllib.parse.unquote(parts.path)
  if parts.scheme == "file" or path.startswith("/"):
    # Absolute addresses of the installed files (`file:///usr/share/doc/...`).
    prefix = "/" + doc_root.strip("/") + "/"
    if not path.startswith(prefix):
      return href.strip()
    path = path[len(prefix):]
  elif not path:
    path = page_key
  else:
    path = posixpath.join(posixpath.dirname(page_key), path)
  if path.endswith("/") or path in (".", ""):
    path = path + "/index.html"
  path = posixpath.normpath(path)
  return f"{path}#{parts.fragment}" if parts.fragment else path


def _page_key(relative: str) -> str:
  return relative[:-len(".gz")] if relative.endswith(".gz") else relative


def _files(doc_root: pathlib.Path, site: Site) -> Iterator[tuple[str, pathlib.Path]]:
  """(relative path, path) of the site's page files, sorted; symlinked folders followed once."""
  seen: set[str] = set()
  found = []
  for folder, folders, names in os.walk(doc_root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:
      folders[:] = []
      continue
    seen.add(real)
    folders.sort()
    relative_folder = pathlib.Path(folder).relative_to(doc_root).as_posix()
    for name in names:
      relative = name if relative_folder == "." else f"{relative_folder}/{name}"
      key = _page_key(relative)
      if (any(fnmatch.fnmatchcase(key, p) for p in site.include)
          and not any(fnmatch.fnmatchcase(key, p) for p in site.exclude)):
        found.append((relative, pathlib.Path(folder) / name))
  return iter(sorted(found))


def _symlink_key(path: pathlib.Path, relative: str, site: Site) -> str | None:
  """The key of the page a symlink names, when it names one inside the doc root."""
  if not path.is_symlink():
    return None
  target = os.readlink(path)
  if target.startswith("/"):
    prefix = "/" + site.doc_root.strip("/") + "/"
    if not target.startswith(prefix):
      return None
    resolved = target[len(prefix):]
  else:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), target))
  return None if resolved.startswith("../") else _page_key(resolved)


class _SiteReader:
  """Pages of one site: entity candidates, redirects, and the counts of what was skipped."""

  def __init__(self, doc_root: pathlib.Path, site: Site):
    self.doc_root = doc_root
    self.site = site
    self.redirects: dict[str, str] = {}
    self.counts: collections.Counter = collections.Counter()

  def _title(self, document) -> str:
    for xpath in self.site.title:
      for element in document.xpath(xpath):
        title = html_sites.text_of(element)
        if self.site.title_strip:
          title = re.sub(self.site.title_strip, "", title).strip()
        if title:
          return title
    return ""

  def _link_target(self, page_key: str):
    def target(href: str) -> str | None:
      if self.site.rewrite_href is not None:
        href = self.site.rewrite_href(href, page_key, self.doc_root)
        if href is None:
          return None
      return resolve_href(href, page_key, self.site.doc_root)
    return target

  def _document(self, key: str, relative: str, path: pathlib.Path):
    """The page's document, or None for a symlink, a redirect stub, another language."""
    linked = _symlink_key(path, relative, self.site)
    if linked is not None:
      self.counts["symlinks"] += 1
      self.redirects[key] = linked
      return None
    document = read_html(path)
    if document is None:
      self.counts["unreadable"] += 1
      return None
    redirect = _redirect_url(document)
    if redirect is not None:
      self.counts["redirects"] += 1
      target = resolve_href(redirect, key, self.site.doc_root)
      if target is not None and target != key:
        self.redirects[key] = target
      return None
    language = document.get("lang") or document.get(_XML_LANG)
    if language and not language.lower().startswith(self.site.language):
      self.counts["other_language"] += 1
      return None
    return document

  def read(self, relative: str, path: pathlib.Path) -> list[pages.Page]:
    """The page (first) and its anchored items; nothing for a file that is no page."""
    key = _page_key(relative)
    document = self._document(key, relative, path)
    if document is None:
      return []
    if self.site.prepare is not None:
      self.site.prepare(document)
    for xpath in self.site.drop:
      for element in document.xpath(xpath):
        if element.getparent() is not None:
          element.drop_tree()
    roots = [e for xpath in self.site.content for e in document.xpath(xpath)]
    body = document.find("body")
    root = roots[0] if roots else (body if body is not None else document)
    title = self._title(document)
    items = [item for rule in self.site.items for item in rule(root, title)]
    self.counts["items"] += len(items)
    owner_of = {element: item for item in items for element in item.elements}
    unlinked = {a for xpath in self.site.unlink for a in root.xpath(xpath)}
    target = self._link_target(key)

    renderer = _Renderer(owner_of, None, unlinked, target)
    renderer.walk(root, top=True)
    rendered = renderer.result()
    result = [pages.Page(key, title, rendered.text, rendered.links,
                         tuple(f"{key}#{i}" for i in dict.fromkeys(rendered.ids)))]
    for item in items:
      renderer = _Renderer(owner_of, item, unlinked, target)
      for element in item.elements:
        renderer.walk(element, top=True)
      rendered = renderer.result()
      aliases = [f"{key}#{i}" for i in item.ids[1:] + rendered.ids if i != item.ids[0]]
      result.append(pages.Page(f"{key}#{item.ids[0]}", item.title, rendered.text,
                               rendered.links, tuple(dict.fromkeys(aliases))))
    return result


def link_share(page: pages.Page) -> float:
  """The share of the page's words that are anchor text."""
  words = len(page.text.split())
  anchored = sum(len(page.text[link.start:link.end].split()) for link in page.links)
  return anchored / words if words else 0.0


def make_resolver(known: set[str], redirects: dict[str, str], site: Site
                  ) -> Callable[[str], str | None]:
  """Resolves a link target that is no key: through redirects and symlinks, equivalent path
  prefixes, a percent-encoded fragment, and finally the page without its fragment."""
  def resolve(target: str) -> str | None:
    path, _, fragment = target.partition("#")
    for _ in range(MAX_REDIRECT_HOPS):
      if path not in redirects:
        break
      path, _, redirected_fragment = redirects[path].partition("#")
      fragment = fragment or redirected_fragment
    paths = [path] + [other + path[len(prefix):] for prefix, other in site.same_as
                      if path.startswith(prefix)]
    for candidate in paths:
      if candidate in redirects:
        candidate = redirects[candidate].partition("#")[0]
      keys = [f"{candidate}#{fragment}", f"{candidate}#{urllib.parse.unquote(fragment)}"]
      for key in (keys if fragment else []) + [candidate]:
        if key in known:
          return key
    return None
  return resolve


def build(root: pathlib.Path, world: str) -> pages.World:
  """The world `world` (a package name in `SITES`) from the packages extracted under `root`."""
  site = SITES[world]
  doc_root = pathlib.Path(root) / site.doc_root
  reader = _SiteReader(doc_root, site)
  kept: list[pages.Page] = []
  for relative, path in _files(doc_root, site):
    reader.counts["files"] += 1
    for page in reader.read(relative, path):
      if link_share(page) > MAX_LINK_SHARE:
        reader.counts["mostly_links"] += 1
      elif not page.text.replace(page.title, "", 1).strip():
        # A page whose items were all carved out (a glossary) keeps only its heading.
        reader.counts["title_only"] += 1
      else:
        kept.append(page)
  known = {key for page in kept for key in (page.key,) + page.aliases}
  result = pages.build_world(world, kept, resolve=make_resolver(known, reader.redirects, site))
  result.stats["html"] = {name: reader.counts[name] for name in sorted(reader.counts)}
  return result
