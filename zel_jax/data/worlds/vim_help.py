"""Vim's help files (package vim-runtime) as a benchmark world, through the shared writer.

A help file is plain text with three kinds of markup, read as Vim's own `syntax/help.vim`
and `:helptags` read them:

- `*tag*` defines a tag: `:helptags` accepts it outside examples when whitespace (or the
  line start) comes before and after it and nothing inside is a space, tab or `|`. Tags
  usually stand right-aligned on the line of what they name, or alone on the line above it.
- `|tag|` jumps to a tag (not after a backslash); `'name'` jumps to the option tag
  `'name'` (help.vim's `'[a-z]{2,}'` and `'t_..'`), which we take only when that option tag
  is defined somewhere, since the same quotes also surround ordinary words.
- a line ending in ` >` (or just `>`) starts an example; it ends before the next line that
  starts with a non-blank, or at a line starting with `<`, whose `<` is hidden. Vim finds no
  jumps in examples, nor do we.

An entity is a tagged item: from a line defining tags to the next such line. Tags defined
before the item has any words of its own (on the same line or the next tag lines) are
aliases of it; the first is its key and title (`:help`, `'tabstop'`, `CTRL-W_s`), unless
it is an error number (`E764`) and another tag names the item. Error numbers at the end of
a line of text (`Only works for the current tab page. *E1308*`) name an error the item
raises, not a new item: they are aliases of the item they stand in. The file tag
(`*usr_01.txt*`, first line) makes the file's introduction an entity the same way, so
`options` joins `options.txt`.

The text is what Vim shows with concealing on: stars, bars, backticks, `~` header marks and
`>`/`<` example marks removed, the words of tags and links kept. A link's anchor is the tag
as written without its bars (`|:retab|` shows `:retab`); an option reference keeps its
quotes, as the option's tag does (`'ts'`, an alias of `'tabstop'`). Boilerplate goes: the
`For Vim version` note, the `VIM REFERENCE MANUAL` banner, the user manual's `Next chapter:`
/ `Table of contents:` / `Copyright:` navigation, `====` section rules, the modeline.

An item whose own lines hold fewer than `MIN_WORDS` words (a section heading, a tag line
over a one-line command) borrows the lines after it, up to the next section rule, until it
has that many, so that it keeps a description; links in borrowed lines belong to the item
that owns them and are not repeated.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

from zel_jax.data.worlds import pages

HELP_GLOB = "usr/share/vim/vim*/doc/*.txt"
# Words a short item borrows from the lines after it (see the module docstring).
MIN_WORDS = 20

_MARKUP = re.compile(
    r"(?P<tag>(?<![^ \t])\*[^ \t|*]+\*(?=[ \t]|$))"
    r"|(?P<jump>(?<!\\)\|[#-)!+-{}~]+\|)"
    r"|(?P<option>(?<![\w'])'(?:[a-z]{2,}|t_..)'(?![\w']))"
    r"|(?P<command>`[^` \t]+`)")
_SECTION_RULE = re.compile(r"^(?:===.*===|---.*--)$")
_HEADER_MARK = re.compile(r"\s?~$")
_VERSION_NOTE = re.compile(r"\bFor Vim version\b.*$")
_BANNER = re.compile(r"^\s*VIM (?:REFERENCE|USER) MANUAL\b")
_NAVIGATION = re.compile(r"^\s*(?:Next chapter:|Previous chapter:|Table of contents:|"
                         r"Copyright: see \|manual-copyright\|)")
_MODELINE = re.compile(r"(?:^|\s)vim:\s*[a-z]+=.*:\s*$")
_WORD = re.compile(r"\w+")
_ERROR_NUMBER = re.compile(r"E\d+")
# Vim reads modelines in the first and last lines of a file.
_MODELINE_LINES = 5
_BANNER_LINES = 10


@dataclasses.dataclass
class _Line:
  """One help line as shown: its text, the tags it defines, the links in it."""
  text: str
  tags: list[str]
  links: list[tuple[int, int, str]]
  rule: bool = False          # a section rule: ends the lines an item may borrow
  words_of_its_own: int = 0   # words other than the tags it defines


def defined_tags(text: str) -> list[str]:
  """The tags `:helptags` finds in a help file (none inside examples)."""
  return [tag for line in read_help_file(text, set()) for tag in line.tags]


def _shown_line(line: str, option_tags: set[str]) -> _Line:
  """A line outside examples with its markup concealed, as Vim shows it."""
  line = _HEADER_MARK.sub("", line)
  parts: list[str] = []
  length = 0
  tags: list[str] = []
  links: list[tuple[int, int, str]] = []
  tag_words = 0
  position = 0
  for match in _MARKUP.finditer(line):
    kind = match.lastgroup
    raw = match.group()
    if kind == "option" and raw not in option_tags:
      continue
    before = line[position:match.start()]
    parts.append(before)
    length += len(before)
    position = match.end()
    shown = raw if kind == "option" else raw[1:-1]
    if kind == "tag":
      tags.append(shown)
      tag_words += len(_WORD.findall(shown))
    elif kind in ("jump", "option"):
      links.append((length, length + len(shown), shown))
    parts.append(shown)
    length += len(shown)
  parts.append(line[position:])
  text = "".join(parts)
  return _Line(text, tags, links, words_of_its_own=len(_WORD.findall(text)) - tag_words)


def read_help_file(text: str, option_tags: set[str]) -> list[_Line]:
  """The lines of one help file as shown, boilerplate removed."""
  raw_lines = text.splitlines()
  shown: list[_Line] = []
  in_example = False
  for number, line in enumerate(raw_lines):
    line = line.rstrip()
    if in_example:
      if line.startswith("<"):
        in_example = False
        line = line[1:]
      elif line and line[0] not in " \t":
        in_example = False
      else:
        # Code stays as written: no tags (`:helptags` skips examples), no jumps.
        shown.append(_Line(line, [], [], words_of_its_own=len(_WORD.findall(line))))
        continue
    if number >= len(raw_lines) - _MODELINE_LINES:
      line = _MODELINE.sub("", line)
    if number == 0:
      line = _VERSION_NOTE.sub("", line).rstrip()
    if (number < _BANNER_LINES and _BANNER.match(line)) or _NAVIGATION.match(line):
      continue
    if _SECTION_RULE.match(line):
      shown.append(_Line("", [], [], rule=True))
      continue
    if line == ">" or line.endswith(" >"):
      in_example = True
      line = line[:-1].rstrip()
    shown.append(_shown_line(line, option_tags))
  return shown


def _page(lines: list[_Line], start: int, end: int, tags: list[str]) -> pages.Page:
  """The item of lines[start:end], borrowing following lines when it has too few words."""
  own_words = sum(l.words_of_its_own for l in lines[start:end])
  stop = end
  # An item that reaches the end of its section has nothing after it to borrow.
  ends_section = any(l.rule for l in lines[start:end])
  while (own_words < MIN_WORDS and not ends_section and stop < len(lines)
         and not lines[stop].rule):
    own_words += lines[stop].words_of_its_own
    stop += 1
  parts: list[str] = []
  links: list[pages.Link] = []
  length = 0
  for index in range(start, stop):
    line = lines[index]
    if index < end:
      links += [pages.Link(length + s, length + e, target) for s, e, target in line.links]
    parts.append(line.text)
    length += len(line.text) + 1
  # An error number (`*E673* *E674* *'printmbfont'*`) names an item less well than its other
  # tags do: the first other tag is the title and key.
  title = next((t for t in tags if not _ERROR_NUMBER.fullmatch(t)), tags[0])
  return pages.Page(key=title, title=title, text="\n".join(parts).rstrip(), links=links,
                    aliases=tuple(t for t in tags if t != title))


def help_file_pages(lines: list[_Line]) -> list[pages.Page]:
  """One page per tagged item of a file's lines."""
  result: list[pages.Page] = []
  start = None
  tags: list[str] = []
  has_words = False
  for index, line in enumerate(lines):
    if line.tags:
      error_numbers_in_text = line.words_of_its_own > 0 and all(
          _ERROR_NUMBER.fullmatch(t) for t in line.tags)
      if start is not None and (not has_words or error_numbers_in_text):
        tags += line.tags
        has_words = has_words or line.words_of_its_own > 0
        continue
      if start is not None:
        result.append(_page(lines, start, index, tags))
      start, tags, has_words = index, list(line.tags), line.words_of_its_own > 0
    elif start is not None and line.words_of_its_own:
      has_words = True
  if start is not None:
    result.append(_page(lines, start, len(lines), tags))
  return result


def help_files(root: pathlib.Path) -> list[pathlib.Path]:
  """The help files of an extracted vim-runtime (the `tags` index is not one)."""
  return sorted(p for p in root.glob(HELP_GLOB) if p.is_file())


def build(root: pathlib.Path, world: str) -> pages.World:
  root = pathlib.Path(root)
  texts = [p.read_text(encoding="utf-8", errors="replace") for p in help_files(root)]
  # A quoted word is an option reference only when the option's tag exists somewhere.
  option_tags = {t for text in texts for t in defined_tags(text)
                 if t.startswith("'") and t.endswith("'")}
  return pages.build_world(
      world, (page for text in texts
              for page in help_file_pages(read_help_file(text, option_tags))))
