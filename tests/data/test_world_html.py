"""HTML documentation worlds built from small real excerpts of the Debian packages.

Each `tests/fixtures/worlds/<package>/` holds a few genuine files of the package at their installed
paths (some cut down to a handful of items), so `html_docs.build` runs on them unchanged.
"""

import pathlib

import pytest

from zel_jax.data import zeshel
from zel_jax.data.worlds import html_docs

DATA = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "worlds"


def tok(text):
  """A title or anchor the way the world stores it (ZESHEL tokens)."""
  return " ".join(zeshel.tokenize(text))


class Built:
  """A built world with lookups by title and by (anchor, source title)."""

  def __init__(self, world):
    self.world = html_docs.build(DATA / world, world)
    self.stats = self.world.stats
    self.by_id = {e.document_id: e for e in self.world.entities}
    self.by_title = {}
    for entity in self.world.entities:
      self.by_title.setdefault(entity.title, entity)

  def entity(self, title):
    return self.by_title[tok(title)]

  def mentions(self, anchor, source):
    """(gold title, category) of each mention of `anchor` in the entity titled `source`."""
    source_id = self.entity(source).document_id
    return [(self.by_id[m.label_document_id].title, m.category) for m in self.world.mentions
            if m.context_document_id == source_id and m.text == tok(anchor)]

  def all_text(self):
    return "\n".join(e.text for e in self.world.entities)


@pytest.fixture(scope="module")
def built():
  cache = {}

  def get(world):
    if world not in cache:
      cache[world] = Built(world)
    return cache[world]
  return get


def test_every_package_has_a_profile():
  assert sorted(html_docs.SITES) == sorted([
      "python3.11-doc", "rust-doc", "apache2-doc", "sqlite3-doc", "gnuplot-doc", "erlang-doc",
      "cmake-doc", "postgresql-doc-15", "git-doc"])


@pytest.mark.parametrize("href, page, expected", [
    ("os.html#os.stat", "library/os.path.html", "library/os.html#os.stat"),
    ("../glossary.html#term-path-like-object", "library/os.path.html",
     "glossary.html#term-path-like-object"),
    ("#os.path.join", "library/os.path.html", "library/os.path.html#os.path.join"),
    ("", "library/os.path.html", "library/os.path.html"),
    ("./mod/", "en/bind.html", "en/mod/index.html"),
    ("file:///usr/share/doc/python3.11/html/library/os.html", "index.html", "library/os.html"),
    ("https://peps.python.org/pep-0519/", "glossary.html", "https://peps.python.org/pep-0519/"),
    ("javascript:void(0)", "std/index.html", None),
])
def test_resolve_href(href, page, expected):
  assert html_docs.resolve_href(href, page, "usr/share/doc/python3.11/html") == expected


def test_resolver_follows_redirects_and_equivalent_prefixes():
  sqlite = html_docs.make_resolver({"cli.html", "cli.html#dotcmd"}, {"sqlite.html": "cli.html"},
                                   html_docs.SITES["sqlite3-doc"])
  assert sqlite("sqlite.html#dotcmd") == "cli.html#dotcmd"
  assert sqlite("sqlite.html#gone") == "cli.html"
  assert sqlite("cli.html#no-such-id") == "cli.html"
  known = {"std/macro.panic.html", "std/macro.eprintln.html",
           "std/vec/struct.Vec.html#deref-methods-[T]"}
  rust = html_docs.make_resolver(known, {"std/macro.eprintln!.html": "std/macro.eprintln.html"},
                                 html_docs.SITES["rust-doc"])
  assert rust("core/macro.panic.html") == "std/macro.panic.html"
  assert rust("alloc/vec/struct.Vec.html#deref-methods-%5BT%5D") == (
      "std/vec/struct.Vec.html#deref-methods-[T]")
  assert rust("std/macro.eprintln!.html") == "std/macro.eprintln.html"
  assert rust("core/macro.assert.html") is None


# -- python3.11-doc (Sphinx) -----------------------------------------------------------------


def test_python_api_items_are_entities_titled_by_full_name(built):
  world = built("python3.11-doc")
  join = world.entity("os.path.join")
  assert join.text.startswith(tok("os.path.join(path, *paths) Join one or more path segments"))
  # The function's text is carved out of its page.
  page = world.entity("os.path — Common pathname manipulations")
  assert "Join one or more path segments" not in page.text
  assert "This module implements some useful functions on pathnames" in page.text
  assert world.entity("path-like object").text.startswith(tok("path-like object An object"))
  assert world.stats["html"]["items"] == 21


def test_python_mentions_keep_the_anchor_as_written(built):
  world = built("python3.11-doc")
  assert world.mentions("split()", "os.path.basename") == [(tok("os.path.split"), "LOW_OVERLAP")]
  assert world.mentions("path-like object", "os.path.abspath") == [
      (tok("path-like object"), "HIGH_OVERLAP")]
  # Across pages to an item, and to a page through the id of its module target.
  assert world.mentions("os.stat()", "os.path.exists") == [(tok("os.stat"), "LOW_OVERLAP")]
  assert world.mentions("os", "os.path — Common pathname manipulations") == [
      (tok("os — Miscellaneous operating system interfaces"), "AMBIGUOUS_SUBSTRING")]
  # A section anchor (intro.html#availability) leads to the page holding it.
  assert world.mentions("Availability", "os.path.commonpath") == [
      (tok("Introduction"), "LOW_OVERLAP")]


def test_python_text_is_clean_and_outside_links_are_counted(built):
  world = built("python3.11-doc")
  text = world.all_text()
  for boilerplate in ("¶", "Quick search", "Theme", "Navigation", "Table of Contents",
                      "Report a Bug", "Show Source", "sig-name", "<dt"):
    assert boilerplate not in text
  unresolved = dict(world.stats["top_unresolved"])
  assert unresolved["https://emscripten.org/"] == 2
  assert world.stats["links_dropped"]["unresolved"] == 60
  # The glossary page is nothing but its terms: only its heading is left, so it is no entity.
  assert world.stats["html"]["title_only"] == 1
  assert tok("Glossary") not in world.by_title


# -- rust-doc (rustdoc) ------------------------------------------------------------------------


def test_rust_pages_and_documented_methods(built):
  world = built("rust-doc")
  titles = set(world.by_title)
  for title in ("std::vec::Vec", "std::vec::Vec::push", "std::vec", "std::option::Option",
                "std::option::Option::None", "std::panic", "std::eprintln"):
    assert tok(title) in titles
  assert world.entity("std::vec::Vec::push").text.startswith(
      tok("pub fn push(&mut self, value: T) Appends an element to the back of a collection."))
  assert world.entity("std::option::Option::None").text == tok("None No value.")


def test_rust_boilerplate_and_copied_trait_docs_are_dropped(built):
  world = built("rust-doc")
  text = world.all_text()
  for dropped in ("AsMut", "RefUnwindSafe", "Blanket Implementations", "Expand description",
                  "Copy item path", "1.0.0 · source"):
    assert tok(dropped) not in text
  # The redirect stub is no entity.
  assert world.stats["html"]["redirects"] == 1
  assert tok("Redirection") not in world.by_title


def test_rust_mentions(built):
  world = built("rust-doc")
  assert world.mentions("Vec::new", "std::vec::Vec") == [
      (tok("std::vec::Vec::new"), "AMBIGUOUS_SUBSTRING")]
  assert world.mentions("None", "std::vec::Vec::pop") == [
      (tok("std::option::Option::None"), "AMBIGUOUS_SUBSTRING")]
  # `../core/macro.panic.html`: std re-exports core's items under the same path.
  assert world.mentions("panic!", "std::todo") == [(tok("std::panic"), "LOW_OVERLAP")]
  # `#method.unwrap_or` is not in this excerpt: the link falls back to the page.
  assert world.mentions("unwrap_or", "std::option::Option::unwrap") == [
      (tok("std::option::Option"), "LOW_OVERLAP")]


# -- apache2-doc -------------------------------------------------------------------------------


def test_apache_directives_are_items_and_other_languages_are_skipped(built):
  world = built("apache2-doc")
  assert world.stats["html"]["other_language"] == 1  # en/bind.html is Portuguese
  assert not any("Vinculando" in title for title in world.by_title)
  root = world.entity("DocumentRoot")
  assert root.text.startswith(tok(
      "DocumentRoot Directive Description: Directory that forms the main document tree "
      "visible from the web Syntax: DocumentRoot directory-path"))
  assert tok("<Directory>") in world.by_title
  page = world.entity("Apache Core Features")
  assert "DocumentRoot" not in page.text


def test_apache_mentions(built):
  world = built("apache2-doc")
  assert world.mentions("Alias", "DocumentRoot") == [(tok("Alias"), "HIGH_OVERLAP")]
  # `../urlmapping.html#documentroot`: a section of a page.
  assert world.mentions("Mapping URLs to Filesystem Locations", "DocumentRoot") == [
      (tok("Mapping URLs to Filesystem Locations"), "HIGH_OVERLAP")]
  assert world.mentions("mod_alias", "AllowOverride") == [
      (tok("Apache Module mod_alias"), "AMBIGUOUS_SUBSTRING")]
  text = world.all_text()
  for boilerplate in ("Available Languages", "Modules | Directives", "¶", "Copyright"):
    assert tok(boilerplate) not in text
  # The field labels of a directive's table link to their legend: not references.
  unresolved = dict(world.stats["top_unresolved"])
  assert not any(target.startswith("en/mod/directive-dict.html") for target in unresolved)


# -- sqlite3-doc ---------------------------------------------------------------------------------


def test_sqlite(built):
  world = built("sqlite3-doc")
  assert world.mentions("CREATE TABLE", "DROP TABLE") == [(tok("CREATE TABLE"), "HIGH_OVERLAP")]
  assert (tok("Database Connection Handle"), "AMBIGUOUS_SUBSTRING") in world.mentions(
      "database connection", "Opening A New Database Connection")
  assert world.mentions("sqlite3_open_v2()", "Database Connection Handle")[0] == (
      tok("Opening A New Database Connection"), "LOW_OVERLAP")
  # c3ref/objlist.html is a list of links; sqlite.html a redirect to cli.html.
  assert world.stats["html"]["mostly_links"] == 1
  assert tok("List Of SQLite Objects") not in world.by_title
  assert world.stats["html"]["redirects"] == 1
  text = world.all_text()
  for boilerplate in ("Small. Fast. Reliable.", "Choose any three", "This page last modified",
                      "Table Of Contents", "hide"):
    assert tok(boilerplate) not in text


# -- postgresql-doc-15 (DocBook) -------------------------------------------------------------


def test_postgresql(built):
  world = built("postgresql-doc-15")
  assert world.mentions("ALTER AGGREGATE", "DROP AGGREGATE") == [
      (tok("ALTER AGGREGATE"), "HIGH_OVERLAP")] * 2
  # Glossary terms are items; a glossary link is an <a> nested in an <a> to the same term.
  assert world.mentions("domain", "24.2. Collation Support") == [(tok("Domain"), "HIGH_OVERLAP")]
  assert world.stats["links_dropped"]["overlapping"] == 14
  assert world.entity("Domain").text.startswith(tok("Domain A user-defined data type"))
  assert tok("Prev Up Next") not in world.all_text()


# -- git-doc (asciidoc) ------------------------------------------------------------------------


def test_git(built):
  world = built("git-doc")
  assert world.mentions("git-rm(1)", "git-add(1)") == [(tok("git-rm(1)"), "HIGH_OVERLAP")]
  assert world.mentions("object database", "alternate object database") == [
      (tok("object database"), "HIGH_OVERLAP")]
  # index.html is a symlink to git.html: one entity.
  assert world.stats["html"]["symlinks"] == 1
  assert [e.title for e in world.world.entities].count(tok("git(1)")) == 1
  text = world.all_text()
  for boilerplate in ("Last updated", "Part of the"):
    assert tok(boilerplate) not in text


# -- erlang-doc ----------------------------------------------------------------------------------


def test_erlang_cross_application_links(built):
  world = built("erlang-doc")
  # javascript:erlhref('../../../../doc/../','erts','erlang.html#type-term') from stdlib.
  assert world.mentions("term()", "lists:keydelete/3") == [
      (tok("erlang:term()"), "AMBIGUOUS_SUBSTRING")]
  assert world.mentions("integer() >= 1", "lists:keyfind/3") == [
      (tok("erlang:pos_integer()"), "LOW_OVERLAP")]
  assert world.entity("lists:keydelete/3").text.startswith(
      tok("keydelete(Key, N, TupleList1) -> TupleList2 Types"))
  text = world.all_text()
  for boilerplate in ("Copyright", "Link to this place", "Version 4.2"):
    assert tok(boilerplate) not in text


# -- gnuplot-doc (LaTeX2HTML), cmake-doc (Sphinx) ---------------------------------------------


def test_gnuplot_icon_crossrefs_become_named_links(built):
  world = built("gnuplot-doc")
  assert world.entity("Lower").text == tok("Lower See raise.")
  assert world.mentions("raise", "Lower") == [(tok("Raise"), "HIGH_OVERLAP")]
  assert world.stats["links_dropped"]["empty_anchor"] == 0
  for navigation in ("Next:", "Up:", "Previous:", "Index"):
    assert tok(navigation) not in world.all_text()
  # "@<span class=MATH>4#4</span>stringvariablename": a placeholder of failed math, dropped.
  assert tok("of the form @stringvariablename will be replaced") in world.entity("Macros").text
  # The cross-reference is unresolved here (node91.html is not in the excerpt).
  assert ["node91.html#substitution", 1] in world.stats["top_unresolved"]


def test_cmake(built):
  world = built("cmake-doc")
  assert world.mentions("BUILD_SHARED_LIBS", "add_library") == [
      (tok("BUILD_SHARED_LIBS"), "HIGH_OVERLAP")]
  assert world.mentions("add_library()", "BUILD_SHARED_LIBS") == [
      (tok("add_library"), "LOW_OVERLAP")]
  assert world.entity("xctest_add_bundle").text.startswith(
      tok("xctest_add_bundle The xctest_add_bundle function creates a XCTest bundle named"))
  assert tok("Contents") not in world.entity("add_library").text.split(" ")[:3]
