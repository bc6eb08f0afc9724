"""The perl-doc world (zel_jax.data.worlds.pod) on excerpts of Debian's perl-doc POD files.

tests/fixtures/worlds/perl-doc/usr/share/perl/5.36.0/pod/ holds cut-down real documents:
perlfunc (its introduction, the entries -X .. chmod and undef, the non-function keywords),
perlvar (up to the `@_` entry), perlsyn (up to the end of "Compound Statements") and perlmod
(its introduction and "BEGIN, UNITCHECK, CHECK, INIT and END").
"""

from __future__ import annotations

import pathlib

import pytest

from zel_jax.data import zeshel
from zel_jax.data.worlds import pages, pod

ROOT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "worlds" / "perl-doc"
WORLD = "perl-doc"


def _tokens(text: str) -> str:
  return " ".join(zeshel.tokenize(text))


@pytest.fixture(scope="module")
def world() -> pages.World:
  return pod.build(ROOT, WORLD)


@pytest.fixture(scope="module")
def by_title(world) -> dict[str, zeshel.Entity]:
  return {entity.title: entity for entity in world.entities}


@pytest.fixture(scope="module")
def mentions(world) -> list[tuple[str, str, str, str]]:
  """(anchor, gold title, context title, category) of every mention."""
  titles = {entity.document_id: entity.title for entity in world.entities}
  return [(m.text, titles[m.label_document_id], titles[m.context_document_id], m.category)
          for m in world.mentions]


def test_documents_entries_and_referenced_sections_are_entities(world, by_title):
  titles = set(by_title)
  for name in ("perlfunc", "perlvar", "perlsyn", "perlmod", "- X", "abs", "chmod", "undef",
               "$ _", "@ _", "Compound Statements",
               "BEGIN , UNITCHECK , CHECK , INIT and END"):
    assert name in titles, name
  # `=item $ARG` + `=item $_` is one entry, named by the variable, not its English alias.
  assert "$ ARG" not in titles
  assert by_title["$ _"].document_id == pages.entity_id(WORLD, "perlvar/$_")
  assert by_title["undef"].document_id == pages.entity_id(WORLD, "perlfunc/undef")
  assert by_title["perlfunc"].document_id == pages.entity_id(WORLD, "perlfunc")
  # Headings nobody links to stay inside their document.
  assert "Statement Modifiers" not in titles
  assert "Statement Modifiers" in by_title["perlsyn"].text
  assert len(world.entities) == world.stats["entities"] == 31


def test_entry_text_is_clean_and_carved_out_of_its_document(by_title):
  entry = by_title["- X"].text
  assert entry.startswith("- X FILEHANDLE - X EXPR - X DIRHANDLE - X A file test , where X")
  # `=for Pod::Functions a file test (-r, -x, etc)` and `X<-r>X<-w>...` leave nothing.
  assert "( - r , - x , etc )" not in entry
  for markup in ("X <", "C <", "L <", "= item", "= for", "Pod : : Functions"):
    assert markup not in entry
  document = by_title["perlfunc"].text
  assert "Alphabetical Listing of Perl Functions - X FILEHANDLE" in document
  assert "A file test , where X is one of the letters" not in document
  assert by_title["$ _"].text.startswith("$ ARG $ _ The default input and pattern - searching")


def test_links_with_text_keep_the_text_as_anchor(mentions):
  assert ("$ _", "$ _", "- X", zeshel.HIGH_OVERLAP) in mentions  # L<C<$_>|perlvar/$_>
  assert ("undef", "undef", "- X", zeshel.HIGH_OVERLAP) in mentions  # L<C<undef>|/undef EXPR>
  assert ("@ _", "@ _", "caller", zeshel.HIGH_OVERLAP) in mentions


def test_name_and_section_link_shows_the_section_in_the_document(world, by_title):
  # perlvar's $_: `See L<perlfunc/-X>` reads `See "-X" in perlfunc`; the mention is `-X`.
  context = by_title["$ _"]
  found = [m for m in world.mentions if m.context_document_id == context.document_id]
  assert [m.text for m in found] == ["- X"]
  mention = found[0]
  assert mention.label_document_id == by_title["- X"].document_id
  tokens = context.text.split()
  assert tokens[mention.start_index - 2:mention.end_index + 4] == \
      ["See", '"', "-", "X", '"', "in", "perlfunc"]


def test_section_links_resolve_forgivingly(mentions):
  # L<perlsyn/"Compound Statements"> from perlfunc's flow-control keywords.
  assert ("Compound Statements", "Compound Statements", "else", zeshel.HIGH_OVERLAP) in mentions
  assert ("Compound Statements", "Compound Statements", "elseif",
          zeshel.HIGH_OVERLAP) in mentions
  assert ("BEGIN , UNITCHECK , CHECK , INIT and END", "BEGIN , UNITCHECK , CHECK , INIT and END",
          "BEGIN", zeshel.HIGH_OVERLAP) in mentions


def test_a_missing_section_falls_back_to_its_document(mentions, by_title):
  # perlmod: `documented in L<perlsyn/defer>`; perlsyn's heading is "defer blocks".
  assert ("perlsyn", "perlsyn", "BEGIN , UNITCHECK , CHECK , INIT and END",
          zeshel.HIGH_OVERLAP) in mentions
  assert '" defer " in perlsyn' in by_title["BEGIN , UNITCHECK , CHECK , INIT and END"].text
  # L<C<$!>|perlvar/$!>: `$!` is past the excerpt of perlvar, so the document is the label.
  assert ("$ !", "perlvar", "- X", zeshel.LOW_OVERLAP) in mentions


def test_links_out_of_the_package_and_to_oneself_are_dropped(world, mentions, by_title):
  stats = world.stats
  assert ["perlop", 4] in stats["top_unresolved"]
  assert ["warnings", 1] in stats["top_unresolved"]  # L<C<use warnings>|warnings>
  assert stats["links_dropped"]["unresolved"] == 57
  assert stats["links_dropped"]["to_self"] == 25  # e.g. L<C<splice>|/splice ...> in perlfunc
  assert stats["links"] == stats["mentions"] + sum(stats["links_dropped"].values())
  assert "please see English" in by_title["perlvar"].text
  assert not [m for m in mentions if m[0] in ("English", "use warnings")]
  assert all(m.label_document_id != m.context_document_id for m in world.mentions)


def test_multi_angle_codes_in_link_text(by_title):
  # L<C<< <FILEHANDLE>\n>>|perlop/"I/O Operators"> (perlop is not in the excerpt).
  assert "the < FILEHANDLE > input operator" in by_title["Compound Statements"].text


def test_render_formatting_codes():
  text = pod.render_paragraph("(C<< < >>, C<< > >>, C<< <= >>, C<< >= >>, C<< == >>, and "
                              "C<< != >>), and")
  assert text.text == "(<, >, <=, >=, ==, and !=), and"
  text = pod.render_paragraph("L<C<trE<sol>E<sol>E<sol>>|/trE<sol>E<sol>E<sol>>.  See\n"
                              "L<perlop/\"Quote-Like Operators\">.")
  assert text.text == 'tr///.  See\n"Quote-Like Operators" in perlop.'
  first, second = text.links
  assert (text.text[first.start:first.end], first.name, first.section) == ("tr///", "", "tr///")
  assert text.text[second.start:second.end] == "Quote-Like Operators"
  assert (second.name, second.section) == ("perlop", "Quote-Like Operators")
  assert text.text[slice(*second.name_span)] == "perlop"
  text = pod.render_paragraph('below.  See L</"Switch Statements"> below for how to do so')
  assert text.text == 'below.  See "Switch Statements" below for how to do so'
  url = pod.render_paragraph("L<https://github.com/Perl/perl5/issues>")
  assert url.text == "https://github.com/Perl/perl5/issues"
  assert url.links[0].url == "https://github.com/Perl/perl5/issues"


def test_non_text_regions_are_skipped():
  # perlfunc's pack entry.
  source = ("=item pack TEMPLATE,LIST\n\n=begin comment\n\nLarry recalls that the hex and bit "
            "string formats (H, h, B, b) were added to\npack for processing data from NASA's "
            "Magellan probe.\n\n=end comment\n\nThe same template may generally also be used "
            "in unpack().\n\n=for Pod::Functions convert a list into a binary representation\n\n"
            "    $foo = pack(\"WWWW\",65,66,67,68);\n")
  assert list(pod.paragraphs(source)) == [
      ("item", "pack TEMPLATE,LIST"),
      ("", "The same template may generally also be used in unpack()."),
      ("verbatim", '    $foo = pack("WWWW",65,66,67,68);')]


def test_entry_names():
  assert pod.entry_name("open FILEHANDLE,MODE,EXPR") == "open"
  assert pod.entry_name("chomp( LIST )") == "chomp"
  assert pod.entry_name("use Module VERSION LIST") == "use"
  assert pod.entry_name("Functions for SCALARs or strings") is None
  assert pod.item_title(["$ARG", "$_"]) == "$_"
  assert pod.item_title(["IO::Handle->output_field_separator( EXPR )",
                         "$OUTPUT_FIELD_SEPARATOR", "$OFS", "$,"]) == "$,"
  assert pod.item_title(["@ARGV"]) == "@ARGV"


def test_build_is_deterministic(world):
  again = pod.build(ROOT, WORLD)
  assert [e.document_id for e in again.entities] == [e.document_id for e in world.entities]
  assert [m.mention_id for m in again.mentions] == [m.mention_id for m in world.mentions]
