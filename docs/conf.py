"""Sphinx configuration of the pyro_vae documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (no network needed, nothing executed).
"""

import glob
import os
import shutil
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
# the package from this checkout; the scripts (and their _startup, _cli) for sphinx-argparse
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, DOCS)  # _parsers.py: the scripts' parsers for sphinx-argparse
os.environ.setdefault("MPLBACKEND", "Agg")

project = "pyro_vae"
author = "the pyro_vae authors"
copyright = "the pyro_vae authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
    "myst_nb",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
smartquotes = False  # "--flag" stays two hyphens, quotes stay straight
highlight_language = "text"  # literal blocks (usage lines, examples) are not Python
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# -- the notebooks: copied from notebooks/ at each build, shown with the outputs they are
#    committed with; never executed here
nb_execution_mode = "off"
TUTORIALS = os.path.join(DOCS, "tutorials")  # git-ignored


def _copy_notebooks():
    os.makedirs(TUTORIALS, exist_ok=True)
    wanted = {os.path.basename(p): p for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))}
    for name in os.listdir(TUTORIALS):
        if name.endswith(".ipynb") and name not in wanted:
            os.remove(os.path.join(TUTORIALS, name))
    for name, path in wanted.items():
        target = os.path.join(TUTORIALS, name)
        if not os.path.exists(target) or open(path, "rb").read() != open(target, "rb").read():
            shutil.copyfile(path, target)


_copy_notebooks()

# -- API reference from the docstrings (reST)
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
add_module_names = False

# -- maths: a local MathJax where one is installed (Debian's libjs-mathjax: MathJax 2, drawn as
#    SVG so that no web font has to load under file://), else Sphinx's default CDN copy
_LOCAL_MATHJAX = ["/usr/share/javascript/mathjax/MathJax.js", "/usr/share/mathjax/MathJax.js"]
for _path in _LOCAL_MATHJAX:
    if os.path.exists(_path):
        mathjax_path = f"file://{_path}?config=TeX-AMS_SVG"
        mathjax2_config = {"SVG": {"linebreaks": {"automatic": True}}}  # wide equations wrap
        break

# -- HTML
html_theme = "furo"
html_title = "pyro_vae"
html_static_path = []
