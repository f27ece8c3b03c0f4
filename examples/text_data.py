"""Real English sentences, offline: the Lee news corpus that gensim's wheel ships as test data.

``lee_background.cor`` (300 ABC news articles) and ``lee.cor`` (50 other articles) come from
Lee, Pincombe & Welsh (2005), "An empirical evaluation of models of text document similarity",
and are distributed inside gensim (LGPL-2.1) under ``gensim/test/test_data``. Nothing is bundled
here: the files are read where pip installed them (``pip install gensim``), without importing
gensim itself. The split is by article, so calibration/tuning and held-out sentences never come
from the same article.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

# A sentence ends at . ! or ? (optionally followed by a closing quote) before whitespace and a capital.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"']?[A-Z])")


@dataclass(frozen=True)
class TextSplit:
    calibration: list[str]  # statistics for data-aware init, and distillation data
    tuning: list[str]  # what the tuner evaluates candidates on
    held_out: list[str]  # reported only: from articles nothing else saw


def lee_corpus_dir() -> Path:
    """Folder of gensim's bundled test corpora; ImportError with the install hint if gensim is absent."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ImportError("the Lee news corpus ships with gensim: pip install gensim")
    folder = Path(spec.origin).parent / "test" / "test_data"
    if not (folder / "lee_background.cor").is_file():
        raise FileNotFoundError(f"gensim is installed but {folder / 'lee_background.cor'} is missing")
    return folder


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """Sentences of ``text`` with at least ``min_words`` words (drops headings and fragments)."""
    pieces = (piece.strip() for piece in _SENTENCE_END.split(text.strip()))
    return [piece for piece in pieces if len(piece.split()) >= min_words]


def read_articles(path: Path) -> list[list[str]]:
    """The sentences of each article of a ``.cor`` file (one article per line), in file order."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [sentences for sentences in map(split_sentences, lines) if sentences]


def load_text_split(n_calibration: int = 512, n_tuning: int = 128, n_held_out: int = 256,
                    held_out_articles: int = 40) -> TextSplit:
    """Deterministic article-level split.

    Held out: the 50 ``lee.cor`` articles and the last ``held_out_articles`` background articles.
    The other background articles feed calibration (even-numbered sentences) and tuning (odd ones),
    so both span many articles rather than the first few.
    """
    for name, value in (("n_calibration", n_calibration), ("n_tuning", n_tuning), ("n_held_out", n_held_out)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    folder = lee_corpus_dir()
    articles = read_articles(folder / "lee_background.cor")
    seen, unseen = articles[:-held_out_articles], articles[-held_out_articles:] + read_articles(folder / "lee.cor")
    background = [sentence for article in seen for sentence in article]
    held_out = [sentence for article in unseen for sentence in article]
    calibration, tuning = background[0::2][:n_calibration], background[1::2][:n_tuning]
    if len(calibration) < n_calibration or len(tuning) < n_tuning or len(held_out) < n_held_out:
        raise ValueError(f"the corpus has {len(background[0::2])}/{len(background[1::2])} background and "
                         f"{len(held_out)} held-out sentences; asked for {n_calibration}/{n_tuning}/{n_held_out}")
    return TextSplit(calibration, tuning, held_out[:n_held_out])
