"""The documentation site: it builds with warnings as errors, and it documents what it must.

The site is built once per session from ``docs/`` into a temporary folder, as the README says
(``python -m sphinx -W -b html docs docs/_build/html``); nothing is executed and nothing is
fetched, so it takes seconds.
"""

import ast
import glob
import html
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import time

import pytest

import pyro_vae
from conftest import ROOT

DOCS = os.path.join(ROOT, "docs")
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "scripts", "*.py"))
                 if not os.path.basename(p).startswith("_"))
NOTEBOOKS = sorted(os.path.basename(p)[:-6] for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", DOCS, str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"the docs build failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert seconds < 120, f"the docs build took {seconds:.0f} s; it should take well under a minute"
    return str(out)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_site_builds_with_warnings_as_errors(site):
    for page in ("index", "cli", "results", "tutorials", "api/index"):
        assert os.path.exists(os.path.join(site, page + ".html")), page


def test_api_reference_has_an_entry_for_every_public_name(site):
    text = "".join(_read(p) for p in glob.glob(os.path.join(site, "api", "*.html")))
    ids = set(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', text))
    missing = [name for name in pyro_vae.__all__
               if not any(i.startswith("pyro_vae.") and i.rsplit(".", 1)[-1] == name for i in ids)]
    assert not missing, f"names of pyro_vae.__all__ without an entry in docs/api: {missing}"


def test_api_reference_renders_maths(site):
    page = _read(os.path.join(site, "api", "estimators.html"))
    assert '<div class="math notranslate nohighlight">' in page
    assert "MathJax" in page


def _options(parser):
    """Every option string, and every positional's name, of a parser (help aside)."""
    for action in parser._actions:
        if action.help == "==SUPPRESS==" or action.dest == "help":
            continue
        if action.option_strings:
            yield from action.option_strings
        else:
            yield action.metavar or action.dest


@pytest.mark.parametrize("script", SCRIPTS)
def test_cli_reference_has_every_option_of_each_script(site, script, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))
    parser = importlib.import_module(script).build_parser()
    page = _read(os.path.join(site, "cli.html"))
    starts = {s: page.find(f'<section id="{s.replace("_", "-")}-py">') for s in SCRIPTS}
    assert starts[script] >= 0, f"docs/cli.rst has no section for scripts/{script}.py"
    ends = [i for i in starts.values() if i > starts[script]]
    section = html.unescape(page[starts[script]:min(ends) if ends else None])
    shown = set(re.findall(r"<kbd>([^<]+)</kbd>", section))
    shown = {s.strip() for entry in shown for s in entry.split(",")}
    missing = [o for o in _options(parser) if o not in shown]
    assert not missing, f"scripts/{script}.py options missing from the CLI reference: {missing}"


def test_cli_reference_names_evaluate_options(site):
    assert "<kbd>--ais-steps</kbd>" in _read(os.path.join(site, "cli.html"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_is_a_tutorial_page(site, name):
    assert os.path.exists(os.path.join(site, "tutorials", name + ".html"))
    assert f"tutorials/{name}" in _read(os.path.join(DOCS, "tutorials.md"))


def _defining_module(name):
    """The submodule of pyro_vae whose top level assigns ``name`` (for data, not defs)."""
    found = []
    for info in pkgutil.iter_modules(pyro_vae.__path__):
        path = os.path.join(os.path.dirname(pyro_vae.__file__), info.name + ".py")
        if not os.path.exists(path):
            continue
        for node in ast.parse(_read(path)).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append("pyro_vae." + info.name)
    assert len(found) == 1, f"{name} is assigned in {found or 'no module'}"
    return found[0]


def test_every_public_name_has_a_docstring():
    """Classes and functions carry their own docstring (a class's is not inherited from its
    base). Data (the registries, BINARIZATIONS) cannot carry one: ``inspect.getdoc`` of a dict is
    the docstring of ``dict``; so each is documented by a ``#:`` comment where it is assigned,
    which autodoc reads as its docstring."""
    from sphinx.pycode import ModuleAnalyzer

    undocumented = []
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        if inspect.isclass(obj):
            doc = vars(obj).get("__doc__")
        elif inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
            doc = inspect.getdoc(obj)
        else:
            module = _defining_module(name)
            doc = "\n".join(ModuleAnalyzer.for_module(module).find_attr_docs().get(("", name), []))
        if not (doc and doc.strip()):
            undocumented.append(name)
    assert not undocumented, f"names of pyro_vae.__all__ without a docstring: {undocumented}"
