"""Manual pages (packages manpages and manpages-dev) as one benchmark world.

Every page `usr/share/man/manN/NAME.SECTION[.gz]` is an entity with key and title
`NAME(SECTION)` (`open(2)`, `siginfo_t(3type)`): the way the page is named everywhere,
including in the references to it, and the name plus section is what tells `printf(1)` from
`printf(3)`. Other names lead to a page as aliases: the names its NAME section lists
(`open, openat, creat \\- ...` makes `openat(2)` and `creat(2)`), a symbolic link to it
(Debian turns most `.so` stubs into links), and a page that is only `.so manN/other.N`.
Translated trees (`usr/share/man/<lang>/`) are not read.

The text is the page as `man` would show it, rendered by a small reader of the man(7)
macros and the roff escapes they use: font macros (`.B`, `.BR`, `.IR`, ...), headings,
paragraphs and tagged paragraphs, no-fill and example blocks, tbl tables, string (`.ds`)
and macro (`.de`) definitions, `.if`/`.ie`/`.el` conditions (as nroff with groff), font
and special-character escapes. Filled paragraphs become one line each, no-fill blocks and
table rows keep their lines; the `.TH` header and comments are not text.

A mention is a reference written the man-pages way, `.BR open (2)` or `\\fBopen\\fP(2)`:
a bold or italic name followed by `(section)`; under SEE ALSO any `name(section)` counts.
Elsewhere a roman `name(n)` is left alone: it is code (`sleep(2);` in an example) or
notation (`O(1)`) far more often than a reference. The anchor is `open(2)` as shown; it
links to the page `open(2)`, through aliases; a reference to a section (`(3)`) finds the
one page of its subsections (`(3type)`) named so.
"""

from __future__ import annotations

import gzip
import pathlib
import re
import unicodedata

from zel_jax.data.worlds import pages

MAN_GLOB = "usr/share/man/man*/*"
# groff's special characters (`\(em`, `\[bu]`) that man pages use, as text: name, character.
_SPECIAL_PAIRS = iter("""
em — en – hy - bu • aq ' dq " lq “ rq ” oq ‘ cq ’ ti ~ ha ^ rs \\ co © rg ® tm ™ mu × di ÷
+- ± <= ≤ >= ≥ != ≠ -> → <- ← de ° ga ` aa ´ fm ′ sd ″ sc § ps ¶ dg † la ⟨ ra ⟩ mi − pl +
eq = ba | br | ul _ ru _ sl / ua ↑ da ↓ Eu € eu € Po £ ct ¢ Ye ¥ ss ß 12 ½ 14 ¼ 34 ¾ ^o °
shc \u00ad mc µ Fn ƒ ap ~ or | at @ sh # Do $ bs \\""".split())
SPECIAL_CHARACTERS = dict(zip(_SPECIAL_PAIRS, _SPECIAL_PAIRS))
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ":": "\u0308",
            ",": "\u0327", "o": "\u030a", "v": "\u030c"}
PREDEFINED_STRINGS = {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122", "S": ""}
_SIMPLE_ESCAPES = {"-": "-", "e": "\\", "E": "\\", "\\": "\\", "~": " ", "0": " ", " ": " ",
                   "'": "'", "`": "`", ".": ".", "t": "\t"}
_DROPPED_ESCAPES = set("&)|^/,%:{}acdprux\"")
_NAME = r"(?:\(..|\[[^]]*\]|.)"
# One roff escape after its backslash: a font, a special character, a string, a size or
# register or colour (dropped), an escape taking a delimited argument, or one character.
_ESCAPE = re.compile(
    rf"\\(?:(?P<font>f{_NAME})|(?P<special>\(..|\[[^]]*\])|(?P<string>\*{_NAME})"
    rf"|(?P<dropped>s[-+]?(?:\(..|\[[^]]*\]|[1-3]\d|\d)|[nmMgkF][-+]?{_NAME}|z|\$\d)"
    rf"|(?P<delimited>[NhvwlLDXobZRCAHSxY](?P<delimiter>.).*?(?P=delimiter))|(?P<other>.)"
    rf"|$)", re.S)
_FONT_MACROS = {"B": "B", "I": "I", "SB": "B", "SM": "R", "BR": "BR", "RB": "RB", "BI": "BI",
                "IB": "IB", "IR": "IR", "RI": "RI", "SY": "B", "OP": "BI"}
_FONTS = {"B": "B", "I": "I", "R": "R", "BI": "B", "CB": "B", "CI": "I", "CW": "R",
          "CR": "R", "C": "R", "1": "R", "2": "I", "3": "B", "4": "B"}
_PARAGRAPH = {"PP", "P", "LP", "sp", "HP", "TP", "bp"}
_MAX_DEPTH = 20

_FILE_NAME = re.compile(r"^(?P<name>.+)\.(?P<section>[1-9n][a-zA-Z]*)(?:\.gz)?$")
_REFERENCE = re.compile(r"(?<![\w.+@-])(?P<name>[A-Za-z_][\w.+:@-]*)"
                        r"\((?P<section>[1-9n][a-z]*)\)")
_DESCRIPTION_DASH = re.compile(r"\s[-\u2014\u2013\u2212]\s")
_PAGE_NAME = re.compile(r"^[\w.+:@\[\]-]+$")
_SO = re.compile(r"^\.so\s+(\S+)", re.M)
# `.if` conditions: the nroff/troff letters, groff's `\n(.g`, a string comparison `'a'b'`.
_CONDITION = re.compile(r"(!?)(?:([ntvoe])(?=\s|$)|(\\n(?:\(\.g|\[\.g\]))"
                        r"|(['\"])(.*?)\4(.*?)\4|\S*)\s*")
_ARGUMENT = re.compile(r'"((?:""|[^"])*)"?|((?:\\.|[^ \t"])(?:\\.|[^ \t])*)')


def page_key(name: str, section: str) -> str:
  return f"{name}({section})"


def _key_of_path(path: str) -> str | None:
  match = _FILE_NAME.match(pathlib.PurePosixPath(path).name)
  return page_key(match["name"], match["section"]) if match else None


def _name(text: str) -> str:
  """An escape's name as written: `(xx`, `[long name]` or one character."""
  return text[1:3] if text[:1] == "(" else text[1:-1] if text[:1] == "[" else text


def _special(name: str) -> str:
  if name in SPECIAL_CHARACTERS:
    return SPECIAL_CHARACTERS[name]
  if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
    return chr(int(name[1:], 16))
  if re.fullmatch(r"char\d+", name):
    return chr(int(name[4:]))
  if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
    return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
  return ""


def _strip_comment(line: str) -> str:
  """`line` up to its `\\"` comment (an escaped backslash does not start one)."""
  i = line.find("\\")
  while 0 <= i < len(line) - 1:
    if line[i + 1] in "\"#":
      return line[:i]
    i = line.find("\\", i + 2)
  return line


def _source_lines(text: str) -> list[str]:
  """Input lines, comments removed and escaped newlines joined."""
  lines: list[str] = []
  pending = ""
  for raw in text.split("\n"):
    line = pending + _strip_comment(raw)
    pending = ""
    if (len(line) - len(line.rstrip("\\"))) % 2 == 1:
      pending = line[:-1]
    else:
      lines.append(line)
  return lines + [pending] if pending else lines


def _arguments(text: str) -> list[str]:
  """Macro arguments: blank-separated, double quotes group (`""` inside is a quote)."""
  return [quoted.replace('""', '"') if bare == "" else bare
          for quoted, bare in _ARGUMENT.findall(text)]


class _Renderer:
  """Renders one page: text pieces with their font (R, B or I), section by section."""

  def __init__(self) -> None:
    self.pieces: list[tuple[str, str]] = []
    self.length = 0
    self.font = self.previous_font = "R"
    self.next_line_font: str | None = None
    self.strings = dict(PREDEFINED_STRINGS)
    self.macros: dict[str, list[str]] = {}
    self.conditions: list[bool] = []
    self.sections: list[tuple[int, str]] = []   # (offset, heading) of each .SH
    self.depth = 0
    self.fill = True
    self.tag_pending = False   # after .TP the next line is the tag, on a line of its own

  # -- inline escapes ------------------------------------------------------------------

  def _set_font(self, name: str) -> None:
    if name in ("P", ""):
      self.font, self.previous_font = self.previous_font, self.font
    else:
      self.font, self.previous_font = _FONTS.get(name, "R"), self.font

  def inline(self, raw: str) -> list[tuple[str, str]]:
    """Pieces of `raw` with escapes rendered; font escapes change `self.font`."""
    out: list[tuple[str, str]] = []
    position = 0
    for match in _ESCAPE.finditer(raw):
      out.append((raw[position:match.start()], self.font))
      position = match.end()
      kind = match.lastgroup
      value = match.group(kind) if kind else ""
      if kind == "font":
        self._set_font(_name(value[1:]))
      elif kind == "special":
        out.append((_special(_name(value)), self.font))
      elif kind == "string" and self.depth < _MAX_DEPTH:
        self.depth += 1
        out += self.inline(self.strings.get(_name(value[1:]), ""))
        self.depth -= 1
      elif kind == "delimited":
        argument = value[2:-1]
        if value[0] == "N" and argument.isdigit():
          out.append((chr(int(argument)), self.font))
        elif value[0] == "C":
          out.append((_special(argument), self.font))
        elif value[0] in "Zo":
          out += self.inline(argument)
      elif kind == "other":
        out.append((_SIMPLE_ESCAPES.get(value, "" if value in _DROPPED_ESCAPES else value),
                    self.font))
    out.append((raw[position:], self.font))
    return [piece for piece in out if piece[0]]

  def plain(self, raw: str) -> str:
    font, previous = self.font, self.previous_font
    text = "".join(t for t, _ in self.inline(raw))
    self.font, self.previous_font = font, previous
    return text

  # -- output ----------------------------------------------------------------------------

  def write(self, pieces: list[tuple[str, str]]) -> None:
    for text, font in pieces:
      self.pieces.append((text, font))
      self.length += len(text)

  def newline(self, blank: bool = False) -> None:
    """Ends the output line (and leaves a blank line) unless that is already done."""
    self.trim_spaces()
    tail = "".join(t for t, _ in self.pieces[-2:])
    if not self.pieces or tail.endswith("\n\n") or (not blank and tail.endswith("\n")):
      return
    self.write([("\n" if not blank or tail.endswith("\n") else "\n\n", "R")])

  def trim_spaces(self) -> None:
    while self.pieces and self.pieces[-1][0].endswith(" "):
      text, font = self.pieces.pop()
      self.length -= len(text)
      if text.rstrip(" "):
        self.write([(text.rstrip(" "), font)])

  def end_line(self) -> None:
    """The end of an input line: a space when filling, else (and after a tag) a newline."""
    if self.fill and not self.tag_pending:
      self.write([(" ", "R")])
    else:
      self.tag_pending = False
      self.newline()

  def text_line(self, raw: str) -> None:
    if raw.strip() == "":
      self.newline(blank=True)
      return
    if raw[:1] in " \t":
      self.newline()
    if self.next_line_font:
      saved = self.font
      self.font, self.next_line_font = self.next_line_font, None
      self.write(self.inline(raw))
      self.font = saved
    else:
      self.write(self.inline(raw))
    if not raw.endswith("\\c"):
      self.end_line()

  def font_macro(self, fonts: str, args: list[str]) -> None:
    saved = self.font, self.previous_font
    for index, arg in enumerate(args):
      self.font = fonts[index % len(fonts)]
      spaced = arg + " " if len(fonts) == 1 and index < len(args) - 1 else arg
      self.write(self.inline(spaced))
    self.font, self.previous_font = saved
    self.end_line()

  # -- requests --------------------------------------------------------------------------

  def run(self, lines: list[str]) -> None:
    i = 0
    while i < len(lines):
      i = self.line(lines, i)

  def line(self, lines: list[str], i: int) -> int:
    """Processes lines[i] (and the lines a block request takes); the next line's index."""
    raw = lines[i]
    if not raw[:1] in (".", "'"):
      self.text_line(raw)
      return i + 1
    body = raw[1:].lstrip(" \t")
    while body.startswith(("\\}", "\\{")):
      body = body[2:].lstrip(" \t")
    match = re.match(r"(\S+)\s*(.*)$", body)
    if not match:
      return i + 1
    name, rest = match.group(1), match.group(2)
    args = _arguments(rest)
    if name in ("de", "de1", "am"):
      end = i + 1
      while end < len(lines) and lines[end].strip() != "..":
        end += 1
      if args:
        self.macros[args[0]] = [l.replace("\\\\", "\\") for l in lines[i + 1:end]]
      return end + 1
    if name in ("if", "ie", "el"):
      return self.condition(name, rest, lines, i)
    if name == "TS":
      return self.table(lines, i + 1)
    self.request(name, rest, args)
    return i + 1

  def condition(self, name: str, rest: str, lines: list[str], i: int) -> int:
    if name == "el":
      holds = not (self.conditions.pop() if self.conditions else True)
      body = rest
    else:
      holds, body = self._evaluate(rest)
      if name == "ie":
        self.conditions.append(holds)
    block = body.startswith("\\{")
    if block:
      body = body[2:].lstrip(" \t")
    if holds:
      if body.strip():
        self.line([body], 0)
      return i + 1
    if block and "\\}" not in body:
      i += 1
      while i < len(lines) and "\\}" not in lines[i]:
        i += 1
    return i + 1

  def _evaluate(self, text: str) -> tuple[bool, str]:
    """A condition as nroff under groff evaluates it, and the rest of the line."""
    match = _CONDITION.match(text)
    negate, letter, groff, quote, left, right = match.groups()
    if letter:
      holds = letter in "no"
    elif quote:
      holds = self.plain(left) == self.plain(right)
    else:
      holds = bool(groff)   # other numeric expressions are taken as false
    return holds != bool(negate), text[match.end():]

  def request(self, name: str, rest: str, args: list[str]) -> None:
    if name in _FONT_MACROS:
      fonts = _FONT_MACROS[name]
      if args:
        self.font_macro(fonts, args)
      else:
        self.next_line_font = fonts[0]
    elif name in ("SH", "SS"):
      self.newline(blank=True)
      heading = self.plain(" ".join(args))
      if name == "SH":
        self.sections.append((self.length, heading))
      self.write([(heading, "B")])
      self.newline()
    elif name in _PARAGRAPH:
      self.newline(blank=True)
      self.tag_pending = name == "TP"
    elif name == "IP":
      self.newline(blank=True)
      if args and self.plain(args[0]).strip():
        self.write(self.inline(args[0]) + [(" ", "R")])
      self.tag_pending = False
    elif name in ("br", "nf", "fi", "EX", "EE", "YS", "RS", "RE", "TQ", "in", "ti"):
      self.newline()
      self.fill = {"nf": False, "EX": False, "fi": True, "EE": True}.get(name, self.fill)
      self.tag_pending = name == "TQ" or self.tag_pending
    elif name == "ft":
      self._set_font(args[0] if args else "P")
    elif name == "ds" and args:
      value = rest[len(args[0]):].lstrip(" \t")
      self.strings[args[0]] = value[1:] if value.startswith('"') else value
    elif name in ("UE", "ME") and args:
      self.write(self.inline(args[0]))
      self.newline()
    elif name in self.macros and self.depth < _MAX_DEPTH:
      body = [re.sub(r"\\\$(\d)", lambda m: args[int(m.group(1)) - 1]
                     if int(m.group(1)) <= len(args) else "", l) for l in self.macros[name]]
      self.depth += 1
      self.run(body)
      self.depth -= 1

  def table(self, lines: list[str], i: int) -> int:
    """A tbl table from after `.TS`: each row a line, cells separated by tabs."""
    self.newline()
    tab = "\t"
    if i < len(lines) and lines[i].rstrip().endswith(";"):
      option = re.search(r"tab\s*\((.)\)", lines[i])
      tab = option.group(1) if option else tab
      i += 1
    while i < len(lines) and not lines[i].rstrip().endswith("."):
      i += 1
    i += 1
    while i < len(lines) and not lines[i].startswith(".TE"):
      line = lines[i]
      if line.startswith(".T&"):
        while i < len(lines) and not lines[i].rstrip().endswith("."):
          i += 1
        i += 1
        continue
      if line[:1] in (".", "'"):
        i = self.line(lines, i)
        continue
      i += 1
      if line.strip() in ("_", "=", ""):
        continue
      cells = line.split(tab)
      while cells:
        cell = cells.pop(0)
        if cell.strip() == "T{":
          while i < len(lines) and not lines[i].startswith("T}"):
            i = self.line(lines, i)
          if i < len(lines):
            cells = lines[i][2:].split(tab)[1:] + cells
            i += 1
        elif cell.strip() not in ("_", "=", "\\^"):
          self.write(self.inline(cell))
        self.trim_spaces()
        self.write([("\t", "R")] if cells else [])
      self.newline()
    self.newline()
    return i + 1

  # -- the result ------------------------------------------------------------------------

  def text_and_fonts(self) -> tuple[str, str]:
    """The text and, character by character, its font."""
    return ("".join(t for t, _ in self.pieces), "".join(f * len(t) for t, f in self.pieces))

  def section_at(self, offset: int) -> str:
    return next((name for start, name in reversed(self.sections) if start <= offset), "")


def render(source: str) -> tuple[str, list[pages.Link], list[str]]:
  """A page's text, its references as links to `name(section)`, and its NAME names."""
  renderer = _Renderer()
  renderer.run(_source_lines(source))
  full, fonts = renderer.text_and_fonts()
  lead = len(full) - len(full.lstrip())
  text = full.strip()
  links: list[pages.Link] = []
  for match in _REFERENCE.finditer(full):
    start, end = match.span("name")
    if set(fonts[start:end]) <= {"B", "I"} or renderer.section_at(start) == "SEE ALSO":
      links.append(pages.Link(match.start() - lead, match.end() - lead,
                              page_key(match["name"], match["section"])))
  names: list[str] = []
  for index, (start, heading) in enumerate(renderer.sections):
    if heading.strip().upper() == "NAME":
      stop = (renderer.sections[index + 1][0] if index + 1 < len(renderer.sections)
              else len(full))
      description = full[start + len(heading):stop]
      head = _DESCRIPTION_DASH.split(description, 1)[0]
      names = [n.strip() for n in head.replace("\n", " ").split(",")]
      names = [n for n in names if _PAGE_NAME.match(n)]
      break
  return text, links, names


def _read(path: pathlib.Path) -> str:
  data = path.read_bytes()
  return (gzip.decompress(data) if path.name.endswith(".gz") else data).decode(
      "utf-8", errors="replace")


def _so_target(source: str) -> str | None:
  """The page a `.so` stub includes, when the stub is nothing else."""
  lines = [l for l in _source_lines(source) if l.strip(" .")]
  match = _SO.match(lines[0]) if len(lines) == 1 else None
  return _key_of_path(match.group(1)) if match else None


def man_pages(root: pathlib.Path) -> list[pages.Page]:
  """Every man page under `root` with its aliases (NAME names, links, `.so` stubs)."""
  files = sorted(p for p in pathlib.Path(root).glob(MAN_GLOB)
                 if _key_of_path(p.name) and (p.is_file() or p.is_symlink()))
  redirects: dict[str, list[str]] = {}
  rendered: list[tuple[str, str, list[pages.Link], list[str]]] = []
  for path in files:
    key = _key_of_path(path.name)
    if path.is_symlink():
      # Resolved by name: the target may sit in the other package's extracted tree.
      target = _key_of_path(str(path.readlink()))
      if target:
        redirects.setdefault(target, []).append(key)
      continue
    source = _read(path)
    target = _so_target(source)
    if target:
      redirects.setdefault(target, []).append(key)
      continue
    text, links, names = render(source)
    rendered.append((key, text, links, names))
  result = []
  for key, text, links, names in rendered:
    section = _split_key(key)[1]
    aliases = [page_key(n, section) for n in names] + redirects.get(key, [])
    result.append(pages.Page(key=key, title=key, text=text, links=links,
                             aliases=tuple(dict.fromkeys(a for a in aliases if a != key))))
  return result


def _split_key(key: str) -> tuple[str, str]:
  return key[:key.rindex("(")], key[key.rindex("(") + 1:-1]


def section_resolver(keys: list[str]):
  """`name(3)` -> `name(3type)` (or another subsection of 3) when only that page exists."""
  by_name: dict[str, list[str]] = {}
  for key in sorted(set(keys)):
    by_name.setdefault(_split_key(key)[0], []).append(key)

  def resolve(target: str) -> str | None:
    name, section = _split_key(target)
    found = [k for k in by_name.get(name, ()) if _split_key(k)[1].startswith(section)]
    return found[0] if len(found) == 1 else None
  return resolve


def build(root: pathlib.Path, world: str) -> pages.World:
  man = man_pages(pathlib.Path(root))
  keys = [p.key for p in man] + [a for p in man for a in p.aliases]
  return pages.build_world(world, man, resolve=section_resolver(keys))
