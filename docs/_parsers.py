"""The scripts' parsers as the command-line reference shows them.

Each function returns the script's own ``build_parser()``, the parser ``--help`` prints, with one
change for reST: the scripts print their epilog as it is written (``RawDescriptionHelpFormatter``),
so its indented example lines are marked as a literal block, and the characters that reST would
read as markup are escaped in its prose.
"""

import re

import compare
import evaluate
import train_baselines
import train_svi

_MARKUP = re.compile(r"([\\*`|_])")


def as_rest(text):
    """``text`` (paragraphs split by blank lines) as reST: indented paragraphs become literal
    blocks, the others plain text."""
    out = []
    for paragraph in (text or "").strip("\n").split("\n\n"):
        if paragraph.startswith(" "):
            out.append("::\n\n" + paragraph)
        else:
            out.append(_MARKUP.sub(r"\\\1", paragraph))
    return "\n\n".join(out)


def _for_rest(parser):
    parser.description = _MARKUP.sub(r"\\\1", parser.description or "")
    parser.epilog = as_rest(parser.epilog)
    return parser


def train_svi_parser():
    return _for_rest(train_svi.build_parser())


def train_baselines_parser():
    return _for_rest(train_baselines.build_parser())


def evaluate_parser():
    return _for_rest(evaluate.build_parser())


def compare_parser():
    return _for_rest(compare.build_parser())
