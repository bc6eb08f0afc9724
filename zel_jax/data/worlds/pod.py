"""Perl's POD manual (Debian's perl-doc) as a ZESHEL-layout world.

`usr/share/perl/<version>/pod/*.pod` is read with a small POD parser (no perl at run time):
paragraphs split at blank lines; `=word` starts a command (`=head1`..`=head4`, `=over`/`=item`/
`=back`, `=begin`/`=end`/`=for`, `=pod`/`=cut`/`=encoding`), white space a verbatim paragraph
(kept as code text), anything else ordinary text with formatting codes `B<> I<> C<> F<> S<> E<>
X<> Z<> L<>`, also multi-angle (`C<< $a <=> $b >>`). `=begin`/`=for` regions are skipped unless
their format is `text` or `:`-prefixed, so `=for apidoc`, `=begin comment` leave nothing.

Entities: every document (key and title its name) except `perltoc`, a generated table of
contents; every perlfunc and perlvar entry, a top-level group of `=item`s with no paragraph
between them (`=item open FILEHANDLE,EXPR`..., `=item $ARG` `=item $_`), titled `open` (the
first word, when the rest is an argument signature) or `$_` (the first variable that is not an
English.pm long name); every heading or `=item` some `L<>` points at, titled with its text. An
entity's text is its heading lines and paragraphs; a nested entity leaves only its heading
line in its parent, so each link belongs to one entity. A title several entities share is
qualified with the document (`SEE ALSO (perlre)`), except on the one document or perlfunc/
perlvar entry among them ("Batman" and "Batman (Lego)").

Mentions are `L<>` links, with the anchor a reader of `perldoc` sees (Pod::Text): `L<text|...>`
shows `text`, `L<name>` `name`, `L</sec>` `"sec"`, `L<name/sec>` `"sec" in name`; in that last
form the mention is the part that names the entity linked, `sec` when the section is an entity,
else `name` (the link falls back to the document), the rest staying context. Sections match
the forgiving way perldoc's do (case, white space, quotes ignored; `L<perlfunc/open>` finds
`=item open FILEHANDLE` by its first word). `L<Data::Dumper>`, `L<perldiag>` and URLs are not
in the package: the writer drops and counts them.
"""

from __future__ import annotations

import dataclasses
import html.entities
import itertools
import pathlib
import re
import textwrap
from typing import Iterator

from zel_jax.data.worlds import pages

POD_GLOB = "usr/share/perl/*/pod/*.pod"
# Generated table of contents: every line is another document's heading.
SKIPPED_DOCUMENTS = frozenset({"perltoc"})
# Reference manuals whose every top-level entry (a function, a variable) is an entity.
ENTRY_DOCUMENTS = frozenset({"perlfunc", "perlvar"})

_COMMAND = re.compile(r"=([a-zA-Z]\w*)[ \t]*(.*)", re.S)
_ENCODING = re.compile(rb"^=encoding[ \t]+(\S+)", re.M)
# A formatting code opens with `X<` or `X<<...` plus white space; closes with `>` or with white
# space plus as many `>` as it opened with.
_CODE_TOKEN = re.compile(r"([A-Z])(<(?:<+\s+)?)|(\s+)(>+)|(>)|([^A-Z>\s]+|[A-Z]|\s+)", re.S)
_URL = re.compile(r"[a-zA-Z][\w+.-]*:[^:\s]\S*")
_MAN_PAGE = re.compile(r"(.+)\(\d\w*\)")
_FIRST_WORD = re.compile(r"[^\s(]+")
# What follows a function name in a perlfunc signature: `FILEHANDLE,MODE,EXPR`, `( LIST )`.
_SIGNATURE_REST = re.compile(r"(?:[A-Z][A-Za-z0-9_]*|[\s,;:.()\[\]{}=/*+|\\-])*")
_ENGLISH_NAME = re.compile(r"[$@%][A-Z][A-Z0-9_]+")
_VARIABLE = re.compile(r"[$@%]\S")
_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


@dataclasses.dataclass
class _Code:
  letter: str
  angles: int
  children: list = dataclasses.field(default_factory=list)


def parse_codes(text: str) -> list:
  """Formatting codes of a paragraph as a tree: strings and `_Code`s (unclosed ones end it)."""
  root = _Code("", 0)
  stack = [root]

  def close_single(count: int) -> None:
    for _ in range(count):
      if stack[-1].angles == 1:
        stack.pop()
      else:
        stack[-1].children.append(">")

  for match in _CODE_TOKEN.finditer(text):
    letter, opener, space, closers, closer, plain = match.groups()
    if letter:
      code = _Code(letter, opener.count("<"))
      stack[-1].children.append(code)
      stack.append(code)
    elif closers:
      top, count = stack[-1], len(closers)
      if top.angles > 1 and count >= top.angles:
        stack.pop()
        count -= top.angles
      else:
        top.children.append(space)
      close_single(count)
    elif closer:
      close_single(1)
    else:
      stack[-1].children.append(plain)
  return root.children


def _escape(name: str) -> str:
  """`E<lt>`, `E<0x201E>`, `E<eacute>`: the character (nothing when unknown)."""
  name = name.strip()
  number = re.fullmatch(r"(0[xX][0-9a-fA-F]+)|(0[0-7]+)|(\d+)", name)
  if number:
    value = int(name, 16 if number.group(1) else 8 if number.group(2) else 10)
    return chr(value) if value < 0x110000 else ""
  codepoint = html.entities.name2codepoint.get(name)
  return _ESCAPES.get(name) or (chr(codepoint) if codepoint else "")


@dataclasses.dataclass
class _RawLink:
  """An `L<>` as rendered: `start:end` is the anchor; `name_span` shows the document's name."""
  start: int
  end: int
  name: str
  section: str
  url: str
  name_span: tuple[int, int] | None = None
  located: _Section | str | None = None


@dataclasses.dataclass
class _Text:
  """Rendered text (built piece by piece) with the links inside it."""
  text: str = ""
  links: list[_RawLink] = dataclasses.field(default_factory=list)

  def add(self, piece: str) -> None:
    self.text += piece


def _render(nodes: list, out: _Text) -> None:
  for node in nodes:
    if isinstance(node, str):
      out.add(node)
    elif node.letter == "E":
      out.add(_escape(_plain(node.children)))
    elif node.letter == "L":
      _render_link(node.children, out)
    elif node.letter not in "XZ":  # X<> is an index entry, Z<> a zero-width separator
      _render(node.children, out)


def _plain(nodes: list) -> str:
  out = _Text()
  _render(nodes, out)
  return out.text


def _split_at_bar(nodes: list) -> tuple[list | None, list]:
  """`L<text|target>`: the first `|` outside nested codes separates the text."""
  for i, node in enumerate(nodes):
    if isinstance(node, str) and "|" in node:
      before, after = node.split("|", 1)
      return nodes[:i] + [before], [after] + nodes[i + 1:]
  return None, nodes


def _unquote(text: str) -> str:
  text = text.strip()
  return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _render_link(nodes: list, out: _Text) -> None:
  text_nodes, target_nodes = _split_at_bar(nodes)
  target = " ".join(_plain(target_nodes).split())
  name = section = url = ""
  if _URL.fullmatch(target):
    url = target
  elif target.startswith('"') or ("/" not in target and " " in target):
    section = _unquote(target)  # the old `L<"sec">` / `L<sec with spaces>` forms
  elif "/" in target:
    name, section = target.split("/", 1)
    name, section = name.strip(), _unquote(section)
  else:
    name = target
  link = _RawLink(len(out.text), len(out.text), name, section, url)
  if text_nodes is not None or url or not section:
    # Links inside a link's text are not links.
    out.add(_plain(text_nodes).strip() if text_nodes is not None else url or name)
    link.end = len(out.text)
  else:
    out.add('"')
    link.start = len(out.text)
    link.end = link.start + len(section)
    out.add(section + ('" in ' if name else '"'))
    link.name_span = (len(out.text), len(out.text) + len(name)) if name else None
    out.add(name)
  out.links.append(link)


def render_paragraph(text: str) -> _Text:
  """An ordinary paragraph (or a command's text) as plain text with its links."""
  out = _Text()
  _render(parse_codes(text), out)
  return out


def _decode(data: bytes) -> str:
  declared = _ENCODING.search(data)
  for encoding in ([declared.group(1).decode("ascii", "replace")] if declared else []) + ["utf-8"]:
    try:
      return data.decode(encoding)
    except (LookupError, UnicodeDecodeError):
      pass
  return data.decode("cp1252", errors="replace")  # Pod::Simple's guess without =encoding


def paragraphs(source: str) -> Iterator[tuple[str, str]]:
  """(command, content) of the POD paragraphs: `head1`..`head4`, `over`, `item`, `back`,
  `verbatim` or `` (ordinary); non-POD text and non-text `=begin`/`=for` regions left out."""
  source = source.replace("\r\n", "\n").replace("\r", "\n") + "\n"
  blocks = [block.rstrip() for block in re.split(r"(?m)^[ \t]*\n", source) if block.strip()]
  in_pod = False
  formats: list[str] = []

  def hidden() -> bool:
    return not all(f.startswith(":") or f == "text" for f in formats)

  for block in blocks:
    command = _COMMAND.match(block) if block.startswith("=") else None
    if command:
      name, content = command.group(1), command.group(2)
      if name == "cut":
        in_pod = False
        continue
      in_pod = True
      if name == "begin":
        formats.append((content.split() or [""])[0].lower())
      elif name == "end":
        del formats[-1:]
      elif hidden():
        pass
      elif name == "for":
        target, rest = (content.split(None, 1) + ["", ""])[:2]
        if target.lower() == "text":
          yield "verbatim", rest
        elif target.startswith(":"):
          yield "", rest
      elif name in ("over", "item", "back") or re.fullmatch(r"head[1-4]", name):
        yield name, content
      continue
    if not in_pod or hidden():
      continue
    verbatim = block[0] in " \t" or "text" in formats
    yield ("verbatim", block) if verbatim else ("", block)


@dataclasses.dataclass(eq=False)
class _Section:
  """A node of a document: the document, a heading, a list, an item group or a bullet."""
  kind: str
  document: str
  parent: _Section | None = None
  labels: list[_Text] = dataclasses.field(default_factory=list)
  body: list = dataclasses.field(default_factory=list)
  level: int = 0
  entity: bool = False
  key: str = ""
  title: str = ""

  def ancestors(self) -> Iterator[_Section]:
    node = self.parent
    while node is not None:
      yield node
      node = node.parent

  def walk(self) -> Iterator[_Section]:
    yield self
    for part in self.body:
      if isinstance(part, _Section):
        yield from part.walk()

  def texts(self) -> Iterator[_Text]:
    yield from self.labels
    yield from (part for part in self.body if isinstance(part, _Text))


def parse_document(name: str, source: str) -> _Section:
  """The tree of one POD document: headings nest by level, `=item`s inside their `=over`."""
  document = _Section("doc", name)
  stack = [document]

  def open_node(kind: str, **fields) -> _Section:
    node = _Section(kind, name, parent=stack[-1], **fields)
    stack[-1].body.append(node)
    stack.append(node)
    return node

  for command, content in paragraphs(source):
    if command.startswith("head"):
      level = int(command[4])
      while stack[-1].kind != "doc" and not (stack[-1].kind == "head"
                                             and stack[-1].level < level):
        stack.pop()
      open_node("head", labels=[render_paragraph(content)], level=level)
    elif command == "over":
      open_node("list")
    elif command == "back" and any(node.kind == "list" for node in stack):
      while stack.pop().kind != "list":
        pass
    elif command == "item":
      while stack[-1].kind in ("item", "bullet"):
        stack.pop()
      if stack[-1].kind != "list":
        open_node("list")
      bullet = re.fullmatch(r"\*\s*(.*)|(\d+\.?)", content.strip(), re.S)
      label = render_paragraph((bullet.group(1) or bullet.group(2) or "") if bullet else content)
      previous = stack[-1].body[-1] if stack[-1].body else None
      if (not bullet and isinstance(previous, _Section) and previous.kind == "item"
          and not previous.body):
        previous.labels.append(label)  # `=item` lines of one entry
        stack.append(previous)
      else:
        open_node("bullet" if bullet else "item", labels=[label] if label.text.strip() else [])
    elif command == "verbatim":
      code = textwrap.dedent(content.expandtabs(8)).strip("\n")
      stack[-1].body.append(_Text(code, []))
    else:
      text = render_paragraph(content)
      if text.text.strip():
        stack[-1].body.append(text)
  return document


def _normalize(section: str) -> str:
  return " ".join(_unquote(section).split()).lower()


def entry_name(label: str) -> str | None:
  """`open` of `open FILEHANDLE,MODE,EXPR`, `chomp` of `chomp( LIST )`: a function's name."""
  label = " ".join(label.split())
  first = _FIRST_WORD.match(label)
  if first and _SIGNATURE_REST.fullmatch(label[first.end():]):
    return first.group(0)
  return None


def item_title(labels: list[str]) -> str:
  """`$_` for `$ARG`/`$_`, `$,` for `IO::Handle->output_field_separator( EXPR )`/.../`$,`."""
  variables = [l for l in labels if _VARIABLE.match(l)]
  short = [v for v in variables if not _ENGLISH_NAME.fullmatch(v)]
  if short or variables:
    return (short or variables)[0]
  return entry_name(labels[0]) or labels[0]


class _Sections:
  """Perldoc-style section lookup in one document."""

  def __init__(self, document: _Section):
    self.exact: dict[str, _Section] = {}
    self.by_name: dict[str, _Section] = {}
    self.by_first_word: dict[str, _Section] = {}
    for node in document.walk():
      for label in node.labels if node.kind != "doc" else []:
        self.exact.setdefault(_normalize(label.text), node)
        if node.kind == "item":
          name = entry_name(label.text)  # `open` of `open FILEHANDLE`
          if name:
            self.by_name.setdefault(name.lower(), node)
          # `(*SKIP)` of `(*SKIP) (*SKIP:NAME)`, trusted less than a function's name
          self.by_first_word.setdefault(_normalize(label.text).partition(" ")[0], node)

  def find(self, section: str) -> _Section | None:
    found = self.exact.get(_normalize(section))
    if found is None:
      name = entry_name(_unquote(section)) or _normalize(section)
      found = self.by_name.get(name.lower()) or self.by_first_word.get(name.lower())
    return found


def _is_entry(node: _Section) -> bool:
  """A top-level `=item` group of perlfunc/perlvar naming a function or a variable."""
  labels = [" ".join(label.text.split()) for label in node.labels]
  return (node.kind == "item" and node.document in ENTRY_DOCUMENTS and bool(labels)
          and not any(a.kind in ("item", "bullet") for a in node.ancestors())
          and (any(_VARIABLE.match(l) for l in labels) or entry_name(labels[0]) is not None))


def _name_entities(documents: dict[str, _Section]) -> list[_Section]:
  entities = [node for document in documents.values() for node in document.walk()
              if node.entity]
  same_document: dict[tuple[str, str], list[_Section]] = {}
  for node in entities:
    labels = [" ".join(label.text.split()) for label in node.labels]
    node.title = (node.document if node.kind == "doc" else labels[0] if node.kind == "head"
                  else item_title(labels))
    if node.kind == "item":
      same_document.setdefault((node.document, node.title), []).append(node)
  for group in same_document.values():
    for node in group if len(group) > 1 else []:
      node.title = " ".join(node.labels[0].text.split())  # `do BLOCK`, `do EXPR`
  shared: dict[str, list[_Section]] = {}
  used: set[str] = set()
  for node in entities:
    shared.setdefault(node.title.lower(), []).append(node)
    base = node.key = node.document if node.kind == "doc" else f"{node.document}/{node.title}"
    for n in itertools.count(2):
      if node.key not in used:
        break
      node.key = f"{base}#{n}"
    used.add(node.key)
  for group in shared.values():
    # The document or the perlfunc/perlvar entry keeps the plain name ("Batman"), the others
    # are told apart by their document ("Batman (Lego)").
    main = [n for n in group if n.kind == "doc" or n.document in ENTRY_DOCUMENTS]
    for node in group if len(group) > 1 else []:
      if node.kind != "doc" and not (len(main) == 1 and node is main[0]):
        node.title = f"{node.title} ({node.document})"
  return entities


def _locate_links(documents: dict[str, _Section]) -> None:
  """Each link's target node (or the name it wants); referenced sections become entities."""
  indexes = {name: _Sections(document) for name, document in documents.items()}
  for document in documents.values():
    for node in document.walk():
      for text in node.texts():
        for link in text.links:
          if link.url:
            link.located = link.url
            continue
          name = link.name or document.document
          if name not in documents and _MAN_PAGE.fullmatch(name):
            name = _MAN_PAGE.fullmatch(name).group(1)
          if name not in documents:
            link.located = link.name
            continue
          found = indexes[name].find(link.section) if link.section else None
          link.located = found or documents[name]
          # An `=item` with nothing under it is a mere anchor (perlebcdic's `recipe 3`): its
          # links go to the entity around it.
          if found is not None and found.kind in ("head", "item") and found.body and not any(
              a.entity and a.kind == "item" for a in found.ancestors()):
            found.entity = True


def _page_of(entity: _Section) -> pages.Page:
  out: list[str] = []
  links: list[pages.Link] = []
  size = 0

  def add(text: _Text, with_links: bool, separator: str) -> None:
    nonlocal size
    for link in text.links if with_links else []:
      if isinstance(link.located, _Section):
        target = link.located
        while not target.entity:  # documents are entities
          target = target.parent
        start, end = link.start, link.end
        if link.name_span and target.kind == "doc":
          start, end = link.name_span
        links.append(pages.Link(size + start, size + end, target.key))
      else:
        links.append(pages.Link(size + link.start, size + link.end, link.located or ""))
    out.append(text.text + separator)
    size += len(text.text) + len(separator)

  def emit(node: _Section) -> None:
    own = node is entity or not node.entity
    for label in node.labels:
      add(label, own, "\n")
    if own:
      for part in node.body:
        if isinstance(part, _Text):
          add(part, True, "\n\n")
        else:
          emit(part)

  emit(entity)
  return pages.Page(entity.key, entity.title, "".join(out), links)


def read_documents(root: pathlib.Path) -> dict[str, _Section]:
  """The parsed POD documents under `root` by name, in sorted path order."""
  documents: dict[str, _Section] = {}
  for path in sorted(root.glob(POD_GLOB)):
    name = path.name[:-len(".pod")]
    if name in SKIPPED_DOCUMENTS or name in documents:
      continue
    document = parse_document(name, _decode(path.read_bytes()))
    document.entity = True
    for node in document.walk():
      node.entity = node.entity or _is_entry(node)
    documents[name] = document
  return documents


def build(root: pathlib.Path, world: str) -> pages.World:
  """The world of the POD documents under `root` (a folder perl-doc was extracted into)."""
  documents = read_documents(pathlib.Path(root))
  _locate_links(documents)
  entities = _name_entities(documents)
  return pages.build_world(world, [_page_of(entity) for entity in entities])
