"""Sphinx configuration for genvi's documentation (scverse conventions: myst-nb, book theme)."""

from __future__ import annotations

import os
from importlib.metadata import version as _version

project = "genvi"
author = "genvi developers"
copyright = "2026, genvi developers"  # noqa: A001
release = _version("genvi")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]

# Notebooks are stored without outputs and executed at build time (CI builds with -W, so a
# failing tutorial fails the build). GENVI_DOCS_EXECUTE=off renders them unexecuted.
nb_execution_mode = os.environ.get("GENVI_DOCS_EXECUTE", "force")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True

# Inventories come from the internet; the build machines have none, so the links are opt-in
# (GENVI_DOCS_INTERSPHINX=1) rather than a warning that -W would turn into an error.
intersphinx_mapping = {}
if os.environ.get("GENVI_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
    }

html_theme = "sphinx_book_theme"
html_title = "genvi"
html_theme_options = {
    "repository_url": "https://github.com/genvi/genvi",
    "use_repository_button": False,
}
nitpicky = False
suppress_warnings = ["myst.header", "config.cache"]
