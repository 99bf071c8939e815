"""A lexical retriever for the RAG baseline: BM25 over calibration questions.

Examples:
    >>> rag = Retriever([PersonaItem("Would you run the company?", "Gladly.", "No."), PersonaItem("Tea or coffee?", "Tea.", "Coffee.")])
    >>> print(rag.system_prompt("Would you take over the company?", side="seek", k=1))
    Here are examples of how you answer questions:
    <BLANKLINE>
    Q: Would you run the company?
    A: Gladly.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from persona_interp.data.personas import PersonaItem, Side, check_side

_WORD = re.compile(r"[a-z0-9']+")
RAG_HEADER = "Here are examples of how you answer questions:"


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Retriever:
    """BM25 (k1 = 1.5, b = 0.75) over the questions of ``items``."""

    def __init__(self, items: Sequence[PersonaItem], k1: float = 1.5, b: float = 0.75):
        if not items:
            raise ValueError("Retriever needs at least one item")
        self.items = list(items)
        self.docs = [Counter(tokenize(item.question)) for item in self.items]
        self.lengths = [sum(doc.values()) for doc in self.docs]
        self.avg_length = sum(self.lengths) / len(self.lengths)
        frequency = Counter(term for doc in self.docs for term in doc)
        n = len(self.docs)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        terms = tokenize(query)
        out = []
        for doc, length in zip(self.docs, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg_length)
            out.append(sum(self.idf.get(t, 0.0) * doc[t] * (self.k1 + 1) / (doc[t] + norm) for t in terms if t in doc))
        return out

    def top(self, query: str, k: int) -> list[PersonaItem]:
        """The ``k`` most similar items (ties: earlier item first); an identical question is skipped."""
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        same = " ".join(tokenize(query))
        return [self.items[i] for i in order if " ".join(tokenize(self.items[i].question)) != same][:k]

    def system_prompt(self, query: str, side: Side, k: int = 3) -> str:
        """A system prompt with the ``k`` retrieved questions and their ``side`` answers."""
        check_side(side)
        shots = "\n\n".join(f"Q: {item.question}\nA: {item.answer(side)}" for item in self.top(query, k))
        return f"{RAG_HEADER}\n\n{shots}"
