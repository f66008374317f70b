"""Sphinx configuration for the backbone docs.

The build needs no network: intersphinx is not loaded, and references to
torch's own names (which would need torch's inventory) are not checked by
nitpicky mode.
"""

from __future__ import annotations

import warnings

import sphinx.deprecation

import backbone

# sphinx-autodoc-typehints still calls an API that Sphinx 9 deprecates; the
# notice is for its authors, not for readers of this build log. Older Sphinx
# releases have no such warning class, and nothing to silence.
_deprecation = getattr(sphinx.deprecation, "RemovedInSphinx10Warning", None)
if _deprecation is not None:
    warnings.filterwarnings("ignore", category=_deprecation, module="sphinx_autodoc_typehints")

project = "backbone"
author = "The backbone developers"
copyright = "2026, the backbone developers"
release = backbone.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
    "sphinx.ext.doctest",
]

html_theme = "furo"
html_title = f"backbone {release}"
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
typehints_use_rtype = False
typehints_document_rtype_none = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

nitpicky = True
nitpick_ignore_regex = [
    # torch, and the typing machinery it is annotated with, have no inventory offline.
    (r"py:.*", r"(torch|nn|Tensor|Parameter)(\..*)?"),
    (r"py:.*", r"(typing\.)?(Any|Literal|TypeAlias|Union)(\[.*)?"),
    # The standard library has no inventory offline either.
    (r"py:.*", r"(collections\.abc|typing)\..*|Ellipsis"),
    # A TypeVar, documented by the signature it appears in.
    (r"py:class", r"backbone\.registry\.Builder"),
    # The adapters' private common base, shown by show-inheritance.
    (r"py:class", r"backbone\.adapters\._Wrapper"),
    (r"py:class", r"(os|argparse)\..*"),
]

doctest_global_setup = "import torch"
