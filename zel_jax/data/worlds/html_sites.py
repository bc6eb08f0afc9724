"""Per-site profiles of the HTML documentation builder (`html_docs`): data, and rule makers.

A `Site` says where a package keeps its HTML, which files are documentation, where the content
of a page sits, what is navigation boilerplate, and which elements are anchored items (an API
function, a directive, a glossary term) that are entities of their own. Selectors are XPath
(lxml has no CSS engine without an extra package); `cls("x")` is the XPath test for an element
whose class list holds `x`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from typing import Callable, Union

from lxml import html as lxml_html

Element = lxml_html.HtmlElement


def cls(name: str) -> str:
  """XPath test: the element's class attribute holds the class `name`."""
  return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


def text_of(element: Element) -> str:
  return " ".join(element.text_content().split())


@dataclasses.dataclass
class Item:
  """An anchored item carved out of a page: its ids (the first is its key), title, elements.

  `elements` are siblings in document order; together they are the item's whole text, and
  the page they sit in no longer contains them.
  """
  ids: list[str]
  title: str
  elements: list[Element]


# An XPath (from the item's anchor element) to the element whose text is the title, or
# `f(anchor, item_id, page_title)`.
TitleRule = Union[str, Callable[[Element, str, str], str]]
ItemRule = Callable[[Element, str], list[Item]]


def _title(anchor: Element, rule: TitleRule, item_id: str, page_title: str) -> str:
  if callable(rule):
    return rule(anchor, item_id, page_title)
  found = anchor.xpath(rule)
  return text_of(found[0]) if found else ""


def _element_sibling(element: Element, forward: bool) -> Element | None:
  node = element.getnext() if forward else element.getprevious()
  while node is not None and not isinstance(node.tag, str):
    node = node.getnext() if forward else node.getprevious()
  return node


def block_items(xpath: str, id_xpath: str = "@id", title: TitleRule = ".") -> ItemRule:
  """Each element matching `xpath` is one item; its ids are `id_xpath` from it."""
  def rule(root: Element, page_title: str) -> list[Item]:
    items = []
    for block in root.xpath(xpath):
      ids = [str(value) for value in block.xpath(id_xpath)]
      if ids:
        items.append(Item(ids, _title(block, title, ids[0], page_title), [block]))
    return items
  return rule


def sibling_items(anchor_xpath: str, body_test: str, id_xpath: str = "@id",
                  title: TitleRule = ".", group: bool = True) -> ItemRule:
  """An anchor (a `dt`, a heading) and the sibling right after it that passes `body_test`.

  With `group`, consecutive anchors of the same tag (several signatures of one function, two
  spellings of one glossary term) share the body and form one item.
  """
  def rule(root: Element, page_title: str) -> list[Item]:
    items = []
    for anchor in root.xpath(anchor_xpath):
      previous = _element_sibling(anchor, forward=False)
      if group and previous is not None and previous.tag == anchor.tag:
        continue
      elements = [anchor]
      node = _element_sibling(anchor, forward=True)
      while group and node is not None and node.tag == anchor.tag:
        elements.append(node)
        node = _element_sibling(node, forward=True)
      if node is None or not node.xpath(body_test):
        continue
      ids = [str(value) for element in elements for value in element.xpath(id_xpath)]
      if ids:
        items.append(Item(ids, _title(anchor, title, ids[0], page_title), elements + [node]))
    return items
  return rule


@dataclasses.dataclass(frozen=True)
class Site:
  """Where and how one package keeps its HTML documentation.

  doc_root    folder under the extraction root; keys are paths relative to it
  include     shell patterns (of the relative path; `*` crosses folders) of the pages
  exclude     patterns of included files that are not documentation (search, indexes)
  content     XPaths of the content root, the first that matches wins (else `<body>`)
  title       XPaths of the page title, the first with text wins; `title_strip` is a regular
              expression cut out of the title's text (a site-name suffix)
  drop        XPaths of boilerplate removed with its text (navigation, permalinks, tables of
              contents, copies of other pages' text)
  unlink      XPaths of `<a>` that are not references (a field label linking to its legend)
  items       rules carving anchored items out of a page
  language    pages whose `<html lang>` names another language are skipped
  same_as     path prefixes naming the same files as another prefix (rustdoc's core/ is
              re-exported as std/): a link that resolves to nothing tries the other one
  rewrite_href  `f(href, page_key, doc_root)` for sites whose links are script calls
              (None: not a link)
  prepare     `f(document)` rewriting a site's odd markup in place before anything else
  """
  doc_root: str
  include: tuple[str, ...] = ("*.html",)
  exclude: tuple[str, ...] = ()
  content: tuple[str, ...] = ()
  title: tuple[str, ...] = ("//h1", "//title")
  title_strip: str = ""
  drop: tuple[str, ...] = ()
  unlink: tuple[str, ...] = ()
  items: tuple[ItemRule, ...] = ()
  language: str = "en"
  same_as: tuple[tuple[str, str], ...] = ()
  rewrite_href: Callable[[str, str, pathlib.Path], str | None] | None = None
  prepare: Callable[[Element], None] | None = None


# -- Sphinx (python3.11-doc, cmake-doc) ------------------------------------------------------

def sphinx_title(dt: Element, item_id: str, page_title: str) -> str:
  """A Python object's id is its full name (`os.path.join`, `str.join`); other objects show
  their name as prefix + name (`PyObject_GetAttr`); terms and options show the `dt` text."""
  described = dt.getparent()
  if described is not None and described.xpath(f"self::dl[{cls('py')}]"):
    return item_id
  parts = dt.xpath(f"./span[{cls('sig-prename')} or {cls('sig-name')}]")
  name = "".join(text_of(part) for part in parts)
  return name or text_of(dt)


SPHINX_DROP = (f".//a[{cls('headerlink')}]", f".//div[{cls('toctree-wrapper')}]",
               f".//div[{cls('contents')} and {cls('topic')}]", f".//nav[{cls('contents')}]")
SPHINX_ITEMS = (sibling_items(".//dt[@id]", "self::dd", title=sphinx_title),)


# -- rustdoc (rust-doc) ------------------------------------------------------------------------

def rust_item_title(anchor: Element, item_id: str, page_title: str) -> str:
  # Ids are `method.push`, `variant.None`, `tymethod.next`; a repeated name gets `-1`, `-2`.
  name = re.sub(r"-\d+$", "", item_id.split(".", 1)[-1])
  return f"{page_title}::{name}"


RUST_DROP = (
    # Trait and blanket implementations repeat the trait's documentation on every type;
    # "Methods from Deref" repeat the target's (slice methods on Vec): copies, not content.
    ".//*[@id='trait-implementations' or @id='trait-implementations-list'"
    " or @id='synthetic-implementations' or @id='synthetic-implementations-list'"
    " or @id='blanket-implementations' or @id='blanket-implementations-list'"
    " or @id='implementors' or @id='implementors-list'"
    " or @id='synthetic-implementors' or @id='synthetic-implementors-list'"
    " or starts-with(@id, 'deref-methods')]",
    f".//span[{cls('out-of-band')} or {cls('rightside')} or {cls('notable-traits')}"
    f" or {cls('since')}]",
    f".//a[{cls('anchor')} or {cls('srclink')} or {cls('test-arrow')}]",
    f".//summary[{cls('hideme')}]", ".//button", ".//script",
    f".//div[{cls('code-attribute')}]",
)


# -- LaTeX2HTML (gnuplot-doc) -----------------------------------------------------------------

def latex2html_crossrefs(document: Element) -> None:
  """`<b>fit (p.&nbsp;<a href=...><img alt="[*]"></a>)</b>` as `<b><a href=...>fit</a></b>`.

  LaTeX2HTML links a `\\ref` through an icon after the name it refers to; the name is what
  the reader sees as the link.
  """
  for icon_link in document.xpath("//b/a[@href][img][not(normalize-space())]"):
    bold = icon_link.getparent()
    if bold.index(icon_link) != 0 or "(p." not in (bold.text or ""):
      continue
    name = bold.text.rsplit("(p.", 1)[0].strip()
    if not name:
      continue
    icon_link.tail = None
    for child in list(icon_link):
      icon_link.remove(child)
    icon_link.text = name
    bold.text = None


# -- Erlang/OTP (erlang-doc) -------------------------------------------------------------------

_ERLHREF = re.compile(r"javascript:erlhref\('([^']*)'\s*,\s*'([^']*)'\s*,\s*'([^']*)'\);?")


@functools.lru_cache(maxsize=None)
def _erlang_app_folder(doc_root: pathlib.Path, app: str) -> str:
  # The link names the application, the folder its release (erts-13.1.5, lib/stdlib-4.2).
  for parent in (".", "lib"):
    found = sorted((doc_root / parent).glob(f"{app}-*/doc/html"))
    if found:
      return found[-1].parent.parent.relative_to(doc_root).as_posix()
  return f"lib/{app}"


def erlang_rewrite_href(href: str, page_key: str, doc_root: pathlib.Path) -> str | None:
  """`javascript:erlhref(UPS, APP, REST)` (OTP's erlresolvelinks.js) as the address it opens."""
  match = _ERLHREF.fullmatch(href.strip())
  if match is None:
    return None if href.startswith("javascript:") else href
  ups, app, rest = match.groups()
  if app.startswith("doc/"):
    return f"{ups}{app}/{rest}"
  return f"{ups}{_erlang_app_folder(doc_root, app)}/doc/html/{rest}"


def erlang_item_title(anchor: Element, item_id: str, page_title: str) -> str:
  """`lists:keydelete/3` from the id `keydelete-3`; types `gen_server:server_name()`."""
  # A clause documented on its own (`process_flag(max_heap_size, ...)`) is keyed by its
  # own anchor, but titled as the function.
  item_id = next(iter(anchor.xpath("h4/@id")), item_id)
  if item_id.startswith("type-"):
    return f"{page_title}:{item_id[len('type-'):]}()"
  name, _, arity = item_id.rpartition("-")
  if name and arity.isdigit():
    return f"{page_title}:{name}/{arity}"
  return f"{page_title}:{item_id}"


SITES: dict[str, Site] = {
    "python3.11-doc": Site(
        doc_root="usr/share/doc/python3.11/html",
        exclude=("search.html", "genindex*.html", "py-modindex.html", "_*"),
        content=("//div[@role='main']",),
        title=("//div[@role='main']//h1",),
        drop=SPHINX_DROP,
        items=SPHINX_ITEMS),
    "cmake-doc": Site(
        doc_root="usr/share/doc/cmake-data/html",
        exclude=("search.html", "genindex.html", "_*"),
        content=("//div[@role='main']",),
        title=("//div[@role='main']//h1",),
        drop=SPHINX_DROP,
        unlink=(f".//a[{cls('toc-backref')}]",),
        items=SPHINX_ITEMS),
    "rust-doc": Site(
        doc_root="usr/share/doc/rust-doc/html",
        include=("std/*.html",),
        content=("//section[@id='main-content']",),
        title=(f"//h1[{cls('fqn')}]",),
        # "Struct std::vec::Vec", "Primitive Type slice", "Type Definition std::io::Result"
        title_strip=r"^(?:Struct|Enum|Union|Trait|Module|Crate|Function|Macro|Constant|Static"
                    r"|Keyword|Primitive Type|Type Definition|Trait Alias|Attribute Macro"
                    r"|Derive Macro) ",
        drop=RUST_DROP,
        items=(
            block_items(f".//details[{cls('method-toggle')}][div[{cls('docblock')}]]",
                        id_xpath="summary/section/@id", title=rust_item_title),
            sibling_items(f".//*[{cls('variant')} or {cls('structfield')}][@id]",
                          f"self::div[{cls('docblock')}]", title=rust_item_title, group=False),
        ),
        same_as=(("core/", "std/"), ("alloc/", "std/"))),
    "apache2-doc": Site(
        doc_root="usr/share/doc/apache2-doc/manual",
        include=("en/*.html",),
        content=("//div[@id='page-content']",),
        title=("//div[@id='page-content']//h1",),
        drop=(f".//div[{cls('toplang')} or {cls('bottomlang')} or {cls('top')}]",
              ".//div[@id='quickview']", f".//a[{cls('permalink')}]",
              ".//div[@id='comments_section']", ".//script"),
        unlink=(f".//table[{cls('directive')} or {cls('module')}]//th//a",),
        items=(block_items(f".//div[{cls('directive-section')}]", id_xpath="h2/@id",
                           title="h2/span[@id] | h2[not(span[@id])]"),)),
    "sqlite3-doc": Site(
        doc_root="usr/share/doc/sqlite3",
        # The crossreference and requirement listings are link tables; capi3ref, session and
        # changes concatenate pages that also exist one by one (c3ref/, session/, releaselog/).
        # syntax/ holds the railroad diagrams (pictures) one by one.
        exclude=("search.d/*", "syntax/*", "doc_*_crossref.html", "requirements.html",
                 "capi3ref.html", "session.html", "changes.html"),
        title=("//title",),
        drop=(f"//div[{cls('nosearch')}]", "//p[.//a[@id='mtimelink']]",
              f"//div[{cls('fancy_toc')}]", "//script",
              # syntax diagrams: pictures with show/hide buttons labelled by links
              "//p[button[contains(@onclick, 'hideorshow')]]", f"//div[{cls('imgcontainer')}]")),
    "gnuplot-doc": Site(
        doc_root="usr/share/doc/gnuplot/htmldocs",
        title=("//title",),
        drop=(f"//div[{cls('navigation')}]", f"//ul[{cls('ChildLinks')}]",
              "//a[@id='CHILD_LINKS']", "//address",
              # "4#4", "5#5": LaTeX2HTML's placeholders for math it failed to convert
              f"//span[{cls('MATH')}][translate(., '0123456789', '') = '#']"),
        prepare=latex2html_crossrefs),
    "erlang-doc": Site(
        doc_root="usr/share/doc/erlang-doc",
        exclude=("*/search.html", "doc/docbuild/*"),
        content=("//div[@id='content']",),
        title=("//title",),
        title_strip=r"^Erlang -- ",
        drop=(f".//div[{cls('footer')} or {cls('title-anchors')}]", ".//script"),
        items=(block_items(f".//article[{cls('func')} or {cls('data-types-body')}]",
                           id_xpath="a/@name | h4/@id", title=erlang_item_title),),
        rewrite_href=erlang_rewrite_href),
    "postgresql-doc-15": Site(
        doc_root="usr/share/doc/postgresql-doc-15/html",
        exclude=("bookindex.html",),
        title=("//title",),
        drop=(f"//div[{cls('navheader')} or {cls('navfooter')} or {cls('toc')}]",),
        # configuration parameters, libpq functions, glossary terms
        items=(sibling_items(".//dt[@id]", "self::dd"),)),
    "git-doc": Site(
        doc_root="usr/share/doc/git-doc",
        title=("//title",),
        # "GIT: Part of the git(1) suite" ends every page
        drop=("//div[@id='footer']", "//div[@id='toc']", "//script",
              f"//div[{cls('sect1')}][h2[@id='_git']]"),
        items=(sibling_items(".//dt[a[@id]]", "self::dd", id_xpath="a/@id",
                             title=lambda dt, item_id, page_title: text_of(dt)),)),
}
