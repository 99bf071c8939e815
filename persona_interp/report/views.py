"""circuitsvis views of persona heads and neurons, as standalone HTML that works offline.

circuitsvis inlines its JavaScript in ``local_src``; its notebook display first checks for a network
connection (which stalls offline), so the views here always use the inlined source.

Example:
    >>> view = neuron_tokens_view(model, {"seek": seek_text, "reject": reject_text}, [(12, 301), (20, 5)])
    >>> view.save("figures/power_neurons.html")
    >>> view                                    # renders inline in a notebook
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.data.files import write_text
from persona_interp.model.adapter import get_adapter
from persona_interp.model.capture import capture

Text = Union[str, Sequence[int]]


_LOCAL_SRC = re.compile(r'(?s)^\s*<div id="(?P<id>[^"]+)"[^>]*>\s*<script crossorigin type="module">(?P<lib>.*?)'
                        r'(?P<call>CircuitsVis\.render\(.*\))\s*</script>\s*$')


def combine(panels: Sequence[tuple[str, Any]]) -> str:
    """One HTML body from ``(heading, circuitsvis RenderedHTML)`` panels: each panel gets a proper
    ``<div></div>`` (circuitsvis writes a self-closing div, which browsers leave open, so later panels
    would nest inside and be wiped), and the inlined library is included once for all render calls."""
    divs, calls, library = [], [], ""
    for heading, rendered in panels:
        match = _LOCAL_SRC.match(rendered.local_src)
        if match is None:
            raise ValueError("unexpected circuitsvis output: cannot find its container and render call")
        library = library or match["lib"]
        divs.append((f"<h3>{html.escape(heading)}</h3>\n" if heading else "") + f'<div id="{match["id"]}" style="margin: 15px 0;"></div>')
        calls.append(match["call"] + ";")
    return "\n".join(divs) + '\n<script crossorigin type="module">' + library + "\n" + "\n".join(calls) + "\n</script>"


class OfflineHTML:
    """A self-contained HTML page (scripts inlined) that renders in notebooks and browsers offline."""

    def __init__(self, body: str, title: str = "persona_interp view"):
        self.body = body
        self.title = title

    def _repr_html_(self) -> str:
        return self.body

    def document(self) -> str:
        """The full standalone HTML document."""
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title></head>"
                f"<body>\n{self.body}\n</body></html>\n")

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the document; an existing file is only replaced with ``force=True``."""
        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
        return write_text(path, self.document())


def _ids(model: Any, text: Text) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=False) if isinstance(text, str) else [int(t) for t in text]


def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own (readable, unlike byte-level BPE symbols)."""
    return [model.tokenizer.decode([i]) for i in ids]


def neuron_activations(model: Any, text: Text, neurons: Sequence[tuple[int, int]]) -> Float[Tensor, "pos n_neurons"]:
    """Activations of ``(layer, neuron)`` pairs at every token of ``text`` (a string or token ids)."""
    adapter = get_adapter(model)
    with torch.inference_mode():
        acts = capture(model, torch.tensor([_ids(model, text)]), [adapter.neuron_hook(layer) for layer, _ in neurons],
                       transform=lambda x: x[0].float().cpu())
    return torch.stack([acts[adapter.neuron_hook(layer)][:, unit] for layer, unit in neurons], dim=1)


def neuron_tokens_view(model: Any, texts: dict[str, Text], neurons: Sequence[tuple[int, int]]) -> OfflineHTML:
    """circuitsvis ``colored_tokens_multi`` of the given neurons over each labelled text (e.g. one
    text per pole), one panel per text; pick a neuron in the panel to colour the tokens by it."""
    from circuitsvis.tokens import colored_tokens_multi

    labels = [f"L{layer}N{unit}" for layer, unit in neurons]
    panels = []
    for name, text in texts.items():
        ids = _ids(model, text)
        panels.append((name, colored_tokens_multi(token_strings(model, ids), neuron_activations(model, ids, neurons), labels)))
    return OfflineHTML(combine(panels), title="persona neurons: " + ", ".join(labels))


def attention_patterns(model: Any, text: Text, heads: Sequence[tuple[int, int]]) -> Float[Tensor, "n_heads query key"]:
    """Attention patterns of ``(layer, head)`` pairs on ``text``."""
    adapter = get_adapter(model)
    with torch.inference_mode():
        patterns = capture(model, torch.tensor([_ids(model, text)]), [adapter.pattern_hook(layer) for layer, _ in heads],
                           transform=lambda x: x[0].float().cpu())
    return torch.stack([patterns[adapter.pattern_hook(layer)][head] for layer, head in heads])


def attention_heads_view(model: Any, text: Text, heads: Sequence[tuple[int, int]], title: str = "") -> OfflineHTML:
    """circuitsvis ``attention_heads`` of the given heads on one text."""
    from circuitsvis.attention import attention_heads

    ids = _ids(model, text)
    names = [f"L{layer}H{head}" for layer, head in heads]
    view = attention_heads(attention_patterns(model, ids, heads), token_strings(model, ids), attention_head_names=names)
    return OfflineHTML(combine([(title, view)]), title=title or "persona heads: " + ", ".join(names))
