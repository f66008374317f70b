"""Sphinx configuration for the backbone docs.

The build needs no network: intersphinx reads inventories of the Python and
PyTorch names the docs use, written at build time from the table in
``offline_inventories.py``, and links them to docs.python.org and
docs.pytorch.org. Nitpicky mode checks every reference against them.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import typing
import warnings
from pathlib import Path

import sphinx.deprecation

import backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_inventories import intersphinx_mapping as _offline_mapping

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
    "sphinx_copybutton",
    "sphinx.ext.intersphinx",
]

_inventories = Path(tempfile.mkdtemp(prefix="backbone-docs-inventories-"))
atexit.register(shutil.rmtree, _inventories, ignore_errors=True)
intersphinx_mapping = _offline_mapping(_inventories)
# Nothing is fetched: a missing inventory is an error, not a download.
intersphinx_timeout = 1

# The copy button copies code without its ">>> " and "... " prompts and
# without the output lines, so an example pastes into a file or a shell as is.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

html_theme = "furo"
html_title = f"backbone {release}"
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# Document a return type only where the function returns something.
autodoc_typehints_description_target = "documented_params"
typehints_use_rtype = False
typehints_document_rtype_none = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False


def _typehints_formatter(annotation: object, config: object) -> str | None:
    """Write a type variable as its name (``Builder``), not as ``TypeVar(Builder, bound=...)``."""
    if isinstance(annotation, typing.TypeVar):
        return f"``{annotation.__name__}``"
    return None


typehints_formatter = _typehints_formatter
# A function cannot be pickled into Sphinx's environment cache; Sphinx says
# so and rebuilds every page when conf.py changes, which is what we want.
suppress_warnings = ["config.cache"]

nitpicky = True
nitpick_ignore_regex = [
    # A TypeVar, written by its name in the signatures it appears in.
    (r"py:class", r"backbone\.registry\.Builder"),
    # The adapters' private common base, shown by show-inheritance.
    (r"py:class", r"backbone\.adapters\._Wrapper"),
    # The grouped heads' private common base, shown by show-inheritance.
    (r"py:class", r"backbone\.heads\._Grouped"),
]

doctest_global_setup = "import torch"
