"""The vim-runtime and manpages worlds (vim_help, manpages) on excerpts of the real packages.

tests/fixtures/worlds/vim-runtime/usr/share/vim/vim90/doc/ holds usr_01.txt whole, options.txt
cut to its introduction, the 'shiftwidth', start of 'shortmess', 'softtabstop' and 'tabstop'
items and its last lines (the modeline), usr_51.txt cut to its introduction, the section
with an example help file and its last lines, and the first lines of the `tags` index.

tests/fixtures/worlds/manpages/usr/share/man/ holds real pages of both packages of the world,
as `dpkg -x` extracts them into one root: open.2 with its links creat.2 and openat.2,
close.2, dirfd.3, sched_rr_get_interval.2, timespec.3type, regex.3 with its link
regcomp.3 (manpages-dev); the `.so` stub queue.3, queue.7, regex.7, tzfile.5 and zic.8
(manpages).
"""

from __future__ import annotations

import pathlib

import pytest

from zel_jax.data import zeshel
from zel_jax.data.worlds import manpages, pages, vim_help

DATA = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "worlds"
VIM_ROOT = DATA / "vim-runtime"
MAN_ROOT = DATA / "manpages"


def _tokens(text: str) -> str:
  return " ".join(zeshel.tokenize(text))


def _mentions(world: pages.World) -> list[tuple[str, str, str, str]]:
  """(anchor, gold title, context title, category) of every mention."""
  titles = {entity.document_id: entity.title for entity in world.entities}
  return [(m.text, titles[m.label_document_id], titles[m.context_document_id], m.category)
          for m in world.mentions]


# -- Vim help ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vim_world() -> pages.World:
  return vim_help.build(VIM_ROOT, "vim-runtime")


@pytest.fixture(scope="module")
def vim_pages() -> dict[str, pages.Page]:
  files = vim_help.help_files(VIM_ROOT)
  texts = [p.read_text(encoding="utf-8") for p in files]
  options = {t for text in texts for t in vim_help.defined_tags(text) if t.startswith("'")}
  return {page.key: page for text in texts
          for page in vim_help.help_file_pages(vim_help.read_help_file(text, options))}


def test_vim_tags_are_read_as_helptags_reads_them():
  text = (VIM_ROOT / "usr/share/vim/vim90/doc/usr_51.txt").read_text(encoding="utf-8")
  # The example help file's `*typecorrect.txt*` and `*typecorrect-settings*` sit inside a
  # `>` example, where :helptags (and Vim's own `tags` index) does not look.
  assert vim_help.defined_tags(text) == ["usr_51.txt", "write-local-help"]
  options = (VIM_ROOT / "usr/share/vim/vim90/doc/options.txt").read_text(encoding="utf-8")
  tags = vim_help.defined_tags(options)
  assert tags[:6] == ["options.txt", "options", "boolean", "toggle", "set-option", "E764"]
  assert {"'tabstop'", "'ts'", "'shiftwidth'", "'sw'", "shm-f", "E1336"} <= set(tags)


def test_vim_entities_titles_and_aliases(vim_world, vim_pages):
  titles = [e.title for e in vim_world.entities]
  assert len(titles) == vim_world.stats["entities"] == 24
  for title in ("options.txt", "set-option", ":se", "'tabstop'", "'softtabstop'",
                "usr_01.txt", "01.1", "not-compatible", "usr_51.txt", "write-local-help"):
    assert _tokens(title) in titles, title
  # The `tags` index is not a help file; tags in the example file are not entities.
  assert _tokens("typecorrect.txt") not in titles and _tokens("!!") not in titles
  # `*options*` follows the file tag with no words between: one item, named by the file tag.
  assert vim_pages["options.txt"].aliases == ("options",)
  assert vim_pages["'tabstop'"].aliases == ("'ts'",)
  assert vim_pages[":set-default"].aliases == (":set-&", ":set-&vi", ":set-&vim")
  # Error numbers name an item only when nothing else does, and a trailing `*E1336*` on a
  # line of text ("global") stays in the option it stands in.
  assert vim_pages["set-option"].aliases == ("E764",)
  assert "E518" in vim_pages and vim_pages["E518"].aliases == ("E519",)
  assert vim_pages["'shortmess'"].aliases == ("'shm'", "E1336")
  assert "hit-enter prompts" in vim_pages["'shortmess'"].text
  assert "E1336" not in vim_pages


def test_vim_text_is_shown_text_without_markup_or_boilerplate(vim_world, vim_pages):
  everything = "\n".join(page.text for page in vim_pages.values())
  for boilerplate in ("vim:tw=78", "For Vim version", "VIM USER MANUAL", "VIM REFERENCE",
                      "Next chapter", "Table of contents", "Copyright: see", "=====",
                      "|", "*'tabstop'*", "present\t~"):
    assert boilerplate not in everything, boilerplate
  intro = vim_pages["usr_01.txt"].text
  assert intro.startswith("usr_01.txt\n") and "About the manuals" in intro
  assert "01.1\tTwo manuals" in intro
  # The example marker `>` goes, the example stays as written.
  overview = vim_pages["01.1"].text
  assert "make them visible with:\n\t:set conceallevel=0" in overview
  assert "Many links are in vertical bars, like this: bars." in overview
  # A tagged header row keeps its words, not its `~`.
  assert vim_pages["'shortmess'"].text.endswith("flags:\n\t flag\tmeaning when present")
  # Tags stay in the text as words: in example code too, where they are not tags.
  assert "*typecorrect.txt*\tPlugin for correcting typing mistakes" in (
      vim_pages["write-local-help"].text)
  by_title = {e.title: e for e in vim_world.entities}
  assert by_title[_tokens("'tabstop'")].text.startswith(
      "' tabstop ' ' ts ' ' tabstop ' ' ts ' number ( default 8 ) local to buffer")


def test_vim_short_items_borrow_text_but_not_links(vim_pages, vim_world):
  heading = vim_pages["set-option"]
  assert heading.text.startswith("1. Setting options\t")
  assert ":se[t][!]\t\tShow all options" in heading.text
  assert heading.links == []
  # An item at the end of its section borrows nothing across the `====` rule.
  assert "Setting options" not in vim_pages["boolean"].text
  # The borrowed `|terminal-options|` is counted once, from the item that owns it.
  assert dict(vim_world.stats["top_unresolved"])["terminal-options"] == 1


def test_vim_mentions_anchor_as_written(vim_world):
  mentions = _mentions(vim_world)
  assert ("01 . 1", "01 . 1", "usr _ 01 . txt", zeshel.HIGH_OVERLAP) in mentions
  assert ("set - option", "set - option", "options . txt", zeshel.HIGH_OVERLAP) in mentions
  # An option reference is the quoted option name, a tag of its own ...
  assert ("' softtabstop '", "' softtabstop '", "' tabstop '",
          zeshel.HIGH_OVERLAP) in mentions
  # ... and the short name is an alias of the option it abbreviates.
  assert ("' ts '", "' tabstop '", "' softtabstop '", zeshel.LOW_OVERLAP) in mentions
  assert ("' ts '", "' tabstop '", "' shiftwidth '", zeshel.LOW_OVERLAP) in mentions
  # A quoted word that is no option tag ('noexpandtab' has none here) is no mention.
  assert not any("noexpandtab" in m[0] for m in mentions)
  # The dropped navigation line `Copyright: see |manual-copyright|` gives no mention.
  assert not any(m[1] == _tokens("01.4") and m[2] == _tokens("usr_51.txt") for m in mentions)
  assert len(mentions) == vim_world.stats["mentions"] == 14
  unresolved = dict(vim_world.stats["top_unresolved"])
  assert unresolved[":retab"] == 1 and unresolved["'cindent'"] == 1
  assert vim_world.stats["links_dropped"]["unresolved"] == 29
  # 'tabstop' naming 'tabstop' (its own header line, its text) teaches nothing.
  assert vim_world.stats["links_dropped"]["to_self"] == 22
  assert vim_world.stats["category_share"][zeshel.LOW_OVERLAP] == pytest.approx(2 / 14, 1e-3)


# -- man pages ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def man_world() -> pages.World:
  return manpages.build(MAN_ROOT, "manpages")


@pytest.fixture(scope="module")
def man_pages() -> dict[str, pages.Page]:
  return {page.key: page for page in manpages.man_pages(MAN_ROOT)}


def test_man_entities_are_pages_and_redirects_are_aliases(man_world, man_pages):
  assert sorted(man_pages) == ["close(2)", "dirfd(3)", "open(2)", "queue(7)", "regex(3)",
                               "regex(7)", "sched_rr_get_interval(2)", "timespec(3type)",
                               "tzfile(5)", "zic(8)"]
  assert [e.title for e in man_world.entities][:2] == ["close ( 2 )", "open ( 2 )"]
  assert man_world.entities[1].document_id == pages.entity_id("manpages", "open(2)")
  # NAME lists openat and creat; Debian's links creat.2 and openat.2 say the same.
  assert man_pages["open(2)"].aliases == ("openat(2)", "creat(2)")
  assert man_pages["regex(3)"].aliases == ("regcomp(3)", "regexec(3)", "regerror(3)",
                                           "regfree(3)")
  # queue.3 is only `.so man7/queue.7`.
  assert man_pages["queue(7)"].aliases == ("queue(3)",)


def test_man_text_is_rendered_without_roff(man_pages):
  open_text = man_pages["open(2)"].text
  assert open_text.startswith("NAME\nopen, openat, creat - open and possibly create a file\n\n"
                              "LIBRARY\nStandard C library (libc, -lc)\n\nSYNOPSIS\n"
                              "#include <fcntl.h>\n\nint open(const char *pathname, int flags);")
  assert ("The open() system call opens the file specified by pathname. If the specified "
          "file does not exist, it may optionally (if O_CREAT is specified in flags) be "
          "created by open().") in open_text
  assert "bitwise-or'd in flags" in open_text
  assert "(i.e., the FD_CLOEXEC file descriptor flag described in fcntl(2)" in open_text
  everything = "\n".join(page.text for page in man_pages.values())
  # (regex(7) shows a literal `\(`, written `\e(`.)
  for markup in ("\\fB", "\\fI", "\\fP", "\\-", "\\(em", "\\[aq]", "\\[bu]", ".BR", ".TP",
                 ".TH", ".ds", "\\*", "\\$", "Linux man-pages 6.03", "SUSv4 divides", "T{"):
    assert markup not in everything, markup
  # A tbl table: one row a line, cells between tabs, the T{ block as filled text.
  assert "Interface\tAttribute\tValue\ndirfd()\tThread safety\tMT-Safe" in (
      man_pages["dirfd(3)"].text)
  # zic's `.q "\*-"`: its own macro and string, defined under groff (`.ie \n(.g`).
  assert "If a filename is \u201c-\u201d, standard input is read." in man_pages["zic(8)"].text
  # regex(7) defines `\*(dg` as a dagger for troff and "(!)" for nroff, as man shows it.
  assert 'semantics open; "(!)" marks decisions' in man_pages["regex(7)"].text


def test_man_mentions_are_formatted_references(man_world, man_pages):
  mentions = _mentions(man_world)
  assert ("open ( 2 )", "open ( 2 )", "close ( 2 )", zeshel.HIGH_OVERLAP) in mentions
  assert ("tzfile ( 5 )", "tzfile ( 5 )", "zic ( 8 )", zeshel.HIGH_OVERLAP) in mentions
  assert ("regex ( 3 )", "regex ( 3 )", "regex ( 7 )", zeshel.HIGH_OVERLAP) in mentions
  # Through an alias (NAME section and link): openat(2) is documented by open(2).
  assert ("openat ( 2 )", "open ( 2 )", "dirfd ( 3 )", zeshel.LOW_OVERLAP) in mentions
  # A reference to section 3 finds the only page of its subsections, timespec(3type).
  assert mentions.count(("timespec ( 3 )", "timespec ( 3type )",
                         "sched _ rr _ get _ interval ( 2 )", zeshel.LOW_OVERLAP)) == 2
  assert len(mentions) == man_world.stats["mentions"] == 15
  # The anchor is the reference as shown, covering the name and the section.
  dirfd = man_pages["dirfd(3)"]
  assert [(dirfd.text[l.start:l.end], l.target) for l in dirfd.links][4:7] == [
      ("attributes(7)", "attributes(7)"), ("open(2)", "open(2)"), ("openat(2)", "openat(2)")]
  # The roman `O(1)` of queue(7) is complexity, not a page reference.
  assert "O(1) removal of an entry" in man_pages["queue(7)"].text
  assert not any("O(" in man_pages["queue(7)"].text[l.start:l.end]
                 for l in man_pages["queue(7)"].links)
  # References to pages outside the world are dropped and counted.
  unresolved = dict(man_world.stats["top_unresolved"])
  assert unresolved["fcntl(2)"] == 20 and unresolved["feature_test_macros(7)"] == 4
  assert man_world.stats["links_dropped"]["unresolved"] == 223


def test_man_section_resolver_only_resolves_unambiguous_subsections():
  resolve = manpages.section_resolver(["timespec(3type)", "x(3const)", "x(3type)", "y(2)"])
  assert resolve("timespec(3)") == "timespec(3type)"
  assert resolve("x(3)") is None
  assert resolve("y(3)") is None and resolve("timespec(2)") is None
