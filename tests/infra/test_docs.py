"""The floor plan's written promises: a short README whose links resolve (so do the docs' and
the recipes' READMEs), a license, every recipe documented, and no Python file over 500 lines."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files():
  return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
          *sorted((REPO / "zel_jax" / "recipes").glob("*/README.md"))]


def test_readme_is_short_and_starts_with_what_it_is():
  text = (REPO / "README.md").read_text()
  assert len(text.splitlines()) <= 200
  assert text.startswith("# zel_jax")


def test_every_relative_link_resolves():
  broken = []
  for page in _markdown_files():
    for target in LINK.findall(page.read_text()):
      if re.match(r"^[a-z]+:", target) or target.startswith("#"):
        continue  # URLs and anchors within the page.
      path = (page.parent / target.split("#")[0]).resolve()
      if not path.exists():
        broken.append(f"{page.relative_to(REPO)} -> {target}")
  assert broken == []


def test_every_recipe_has_a_readme_linked_from_the_top_readme():
  readme = (REPO / "README.md").read_text()
  for recipe in sorted(p for p in (REPO / "zel_jax" / "recipes").iterdir()
                       if (p / "__init__.py").exists()):
    assert (recipe / "README.md").exists(), recipe.name
    assert f"zel_jax/recipes/{recipe.name}/README.md" in readme, recipe.name


def test_license_is_apache_2():
  assert "Apache License" in (REPO / "LICENSE").read_text()
  assert "Apache-2.0" in (REPO / "pyproject.toml").read_text()


def test_no_python_file_over_500_lines():
  long = [f"{p.relative_to(REPO)}: {n}"
          for p in sorted(REPO.glob("**/*.py"))
          if ".venv" not in p.parts and not p.is_symlink()
          and (n := len(p.read_text().splitlines())) > 500]
  assert long == []
