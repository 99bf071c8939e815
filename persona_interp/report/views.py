"""circuitsvis views of persona heads and neurons, as standalone HTML that works offline, with a text fallback.

circuitsvis inlines its JavaScript in ``local_src``; its notebook display first checks for a network
connection (which stalls offline), so the views here always use the inlined source: once per notebook (the
first view a kernel displays), once per saved page. Where scripts do not run (GitHub, an untrusted notebook) the
output shows the text fallback: each neuron's top tokens, each head's strongest query → key attention.

Examples:
    >>> view = neuron_tokens_view(model, {"seek": "I want power.", "reject": "I prefer to help."}, [(1, 30), (0, 5)])
    >>> view.save("figures/power_neurons.html")
    PosixPath('figures/power_neurons.html')
    >>> view                                    # renders inline in a notebook; elsewhere the text fallback
    persona neurons: L1N30, L0N5
    seek:
      L1N30: top tokens ...
"""
from __future__ import annotations

import html
import os
import re
import uuid
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


def combine(panels: Sequence[tuple[str, Any]], side_by_side: bool = False) -> tuple[str, str, list[str]]:
    """``(divs, library, render calls)`` from ``(heading, circuitsvis RenderedHTML)`` panels: each panel gets a
    proper ``<div></div>`` (circuitsvis writes a self-closing div, which browsers leave open, so later panels would
    nest inside and be wiped), side by side if asked, and the inlined library is kept once for all render calls."""
    divs, calls, library = [], [], ""
    for heading, rendered in panels:
        match = _LOCAL_SRC.match(rendered.local_src)
        if match is None:
            raise ValueError("unexpected circuitsvis output: cannot find its container and render call")
        library = library or match["lib"]
        panel = (f"<h3>{html.escape(heading)}</h3>\n" if heading else "") + f'<div id="{match["id"]}" style="margin: 15px 0;"></div>'
        divs.append(f'<div style="flex: 1; min-width: 0;">{panel}</div>' if side_by_side else panel)
        calls.append(match["call"] + ";")
    body = "\n".join(divs)
    return (f'<div style="display: flex; gap: 24px;">\n{body}\n</div>' if side_by_side else body), library, calls


class OfflineHTML:
    """A circuitsvis view that renders in notebooks and browsers offline, with a text fallback where scripts do not
    run (GitHub, an untrusted notebook): the fallback is in the same output and the script removes it once the
    view has rendered. In a notebook the JS library is inlined in the first view a kernel displays only; later
    views wait for it (``window.CircuitsVis``). A saved page carries its own copy.

    Examples:
        >>> view = OfflineHTML('<div id="v"></div>', "/* circuitsvis */", [], fallback="L3N5: top tokens 'power' +1.20", title="neurons")
        >>> view.save("figures/neurons.html").name
        'neurons.html'
        >>> view                                # the notebook shows the view (or the fallback)
        neurons
        L3N5: top tokens 'power' +1.20
    """

    library_shown = False           # whether this kernel has already displayed the library in a notebook output

    def __init__(self, divs: str, library: str, calls: Sequence[str], fallback: str, title: str = "persona_interp view"):
        self.divs, self.library, self.calls, self.fallback, self.title = divs, library, list(calls), fallback, title
        self.fallback_id = "pi-fallback-" + uuid.uuid4().hex[:12]

    def _render_script(self) -> str:
        """Render calls that wait for the library (shared by every view of a notebook) and then drop the fallback."""
        return ('<script type="module">\n(function render(tries) {\n'
                '  if (!window.CircuitsVis) { if (tries < 200) setTimeout(() => render(tries + 1), 50); return; }\n'
                '  const CircuitsVis = window.CircuitsVis;\n  ' + "\n  ".join(self.calls) + "\n"
                f'  document.getElementById("{self.fallback_id}")?.remove();\n}})(0);\n</script>')

    def _library_script(self) -> str:
        return f'<script type="module">{self.library}\nwindow.CircuitsVis = CircuitsVis;\n</script>'

    def html(self, with_library: bool = True) -> str:
        """The view's HTML: the text fallback, the panels, the library (if asked) and the render calls."""
        fallback = (f'<pre id="{self.fallback_id}" style="white-space: pre-wrap;">{html.escape(self.fallback)}</pre>')
        return "\n".join([fallback, self.divs] + ([self._library_script()] if with_library else []) + [self._render_script()])

    def _repr_html_(self) -> str:
        with_library = not OfflineHTML.library_shown
        OfflineHTML.library_shown = True
        return self.html(with_library)

    def __repr__(self) -> str:
        return f"{self.title}\n{self.fallback}"

    def document(self) -> str:
        """The full standalone HTML document (with its own copy of the library)."""
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title></head>"
                f"<body>\n{self.html(with_library=True)}\n</body></html>\n")

    def save(self, path: str | os.PathLike[str], force: bool = False) -> Path:
        """Write the document; an existing file is only replaced with ``force=True``."""
        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
        return write_text(path, self.document())


def top_entries(values: Float[Tensor, " n"], labels: Sequence[str], k: int = 5) -> str:
    """``'tok' +1.23, 'tok2' +0.98``: the ``k`` largest values with their labels (a view's text fallback).

    Examples:
        >>> top_entries(torch.tensor([0.1, 2.0, -1.0]), ["a", "b", "c"], k=2)
        "'b' +2.00, 'a' +0.10"
    """
    order = torch.argsort(values, descending=True)[:k]
    return ", ".join(f"{labels[i]!r} {float(values[i]):+.2f}" for i in order.tolist())


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
    panels, fallback = [], []
    for name, text in texts.items():
        ids = _ids(model, text)
        tokens, acts = token_strings(model, ids), neuron_activations(model, ids, neurons)
        panels.append((name, colored_tokens_multi(tokens, acts, labels)))
        fallback += [f"{name}:"] + [f"  {label}: top tokens {top_entries(acts[:, i], tokens)}" for i, label in enumerate(labels)]
    title = "persona neurons: " + ", ".join(labels)
    return OfflineHTML(*combine(panels, side_by_side=True), fallback="\n".join(fallback), title=title)


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
    tokens, patterns = token_strings(model, ids), attention_patterns(model, ids, heads)
    view = attention_heads(patterns, tokens, attention_head_names=names)
    pairs = [f"{tokens[q]}→{tokens[k]}" for q in range(len(tokens)) for k in range(len(tokens))]
    fallback = [f"{name}: strongest query→key attention {top_entries(pattern.flatten(), pairs)}" for name, pattern in zip(names, patterns)]
    return OfflineHTML(*combine([(title, view)]), fallback="\n".join(fallback), title=title or "persona heads: " + ", ".join(names))
