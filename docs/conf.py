"""Sphinx configuration of the mpifed documentation (Markdown pages through MyST-Parser).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from mpifed.version import __version__  # noqa: E402

project = "mpifed"
author = "the mpifed authors"
copyright = "mpifed authors, MIT licence"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: $...$ maths, tables, and anchors for headings down to level 3 so pages can link to sections.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: document what the modules export, in source order; heavy optional imports are mocked.
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": False}
autodoc_typehints = "description"
autodoc_mock_imports = ["cupy", "matplotlib"]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"mpifed {release}"
