import html
import json
import re

import pytest
import torch

import persona_interp as pi
from persona_interp.report.views import (OfflineHTML, attention_heads_view, attention_patterns, combine,
                                         neuron_activations, neuron_tokens_view, top_entries)


def render_props(document):
    """The JSON props of every CircuitsVis.render call in a saved page."""
    return [json.loads(m) for m in re.findall(r"CircuitsVis\.render\(\s*\"[^\"]+\",\s*CircuitsVis\.\w+,\s*(\{.*?\})\s*\);", document, re.S)]


def test_neuron_activations_match_the_hook(llama):
    ids = llama.tokenizer.encode("hello world power", add_special_tokens=False)
    acts = neuron_activations(llama, ids, [(1, 3), (0, 5)])
    _, cache = llama.run_with_cache(torch.tensor([ids]))
    adapter = pi.get_adapter(llama)
    torch.testing.assert_close(acts[:, 0], cache[adapter.neuron_hook(1)][0, :, 3].float())
    torch.testing.assert_close(acts[:, 1], cache[adapter.neuron_hook(0)][0, :, 5].float())


def test_neuron_view_is_standalone_and_carries_the_data(llama, tmp_path):
    pytest.importorskip("circuitsvis")
    texts = {"seek": "I will lead and take power", "reject": "No thank you"}
    view = neuron_tokens_view(llama, texts, [(1, 3), (0, 5)])
    path = view.save(tmp_path / "n.html")
    doc = path.read_text()
    assert doc.startswith("<!DOCTYPE html>") and "<h3>seek</h3>" in doc and "<h3>reject</h3>" in doc
    assert not re.search(r"<script[^>]+src=", doc) and doc.count("var CircuitsVis") == 1   # library inlined once, no network
    assert "/>" not in re.sub(r"<script.*?</script>", "", doc, flags=re.S)                # no self-closing divs
    props = render_props(doc)
    assert len(props) == 2 and props[0]["labels"] == ["L1N3", "L0N5"]
    ids = llama.tokenizer.encode(texts["seek"], add_special_tokens=False)
    assert props[0]["tokens"] == [llama.tokenizer.decode([i]) for i in ids]
    expected = neuron_activations(llama, ids, [(1, 3), (0, 5)])
    assert torch.allclose(torch.tensor(props[0]["values"]), expected, atol=1e-5)
    assert "L1N3: top tokens" in repr(view) and "display: flex" in doc                    # fallback; seek | reject
    with pytest.raises(FileExistsError):
        view.save(path)
    view.save(path, force=True)


def test_attention_view_carries_patterns(llama, tmp_path):
    pytest.importorskip("circuitsvis")
    text = "the leader takes power"
    view = attention_heads_view(llama, text, [(1, 2), (0, 0)], title="power heads")
    props = render_props(view.document())
    patterns = attention_patterns(llama, text, [(1, 2), (0, 0)])
    assert props[0]["attentionHeadNames"] == ["L1H2", "L0H0"]
    assert torch.allclose(torch.tensor(props[0]["attention"]), patterns, atol=1e-5)
    assert torch.allclose(patterns.sum(-1), torch.ones(patterns.shape[:2]), atol=1e-5)


@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="Debian's chromium is not installed")
def test_views_render_in_headless_chromium(llama, tmp_path):
    """The saved page runs its inlined script offline: the browser paints coloured tokens
    (saturated pixels), not just the black headings."""
    import subprocess

    pytest.importorskip("circuitsvis")

    import matplotlib.image

    page = neuron_tokens_view(llama, {"seek": "I will lead and take power"}, [(1, 3), (0, 5)]).save(tmp_path / "n.html")
    shot = tmp_path / "n.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                    "--window-size=800,400", f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    saturation = pixels.max(-1) - pixels.min(-1)
    assert (saturation > 0.3).mean() > 0.002


class Rendered:
    """Stands in for circuitsvis's RenderedHTML: its ``local_src`` shape (container, inlined library, render call)."""

    def __init__(self, uid):
        self.local_src = (f'<div id="{uid}" style="margin: 15px 0;"/>\n<script crossorigin type="module">var CircuitsVis = '
                          f'(() => ({{render: () => 0}}))();\nCircuitsVis.render("{uid}", CircuitsVis.Tokens, {{"x": 1}})\n</script>')


def test_offline_view_inlines_the_library_once_per_notebook_and_carries_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(OfflineHTML, "library_shown", False)
    views = [OfflineHTML(*combine([("seek", Rendered(f"a{i}")), ("reject", Rendered(f"b{i}"))], side_by_side=True),
                         fallback=f"L0N{i}: top tokens 'power' +1.00", title=f"view {i}") for i in range(2)]
    first, second = (view._repr_html_() for view in views)
    assert first.count("var CircuitsVis") == 1 and second.count("var CircuitsVis") == 0       # once per notebook
    assert "window.CircuitsVis" in second and 'CircuitsVis.render("a1"' in second and 'CircuitsVis.render("b1"' in second
    for view, shown in zip(views, (first, second)):                  # the text fallback in the same output, removed by the script
        assert html.escape(view.fallback) in shown and f'getElementById("{view.fallback_id}")?.remove()' in shown
        assert "display: flex" in shown                               # seek and reject side by side
    assert repr(views[1]) == "view 1\nL0N1: top tokens 'power' +1.00"   # what a plain-text front end shows
    doc = views[1].save(tmp_path / "v.html").read_text()
    assert doc.count("var CircuitsVis") == 1 and doc.startswith("<!DOCTYPE html>")   # a saved page carries its own copy
    assert "/>" not in re.sub(r"<script.*?</script>", "", doc, flags=re.S)
    with pytest.raises(ValueError, match="unexpected circuitsvis output"):
        combine([("x", type("R", (), {"local_src": "<div>no script</div>"})())])


def test_top_entries_lists_the_largest_values():
    assert top_entries(torch.tensor([0.1, 2.0, -1.0, 0.5]), ["a", "b", "c", "d"], k=3) == "'b' +2.00, 'd' +0.50, 'a' +0.10"


@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_notebook_html_export_renders_the_view_in_headless_chromium(llama, tmp_path, monkeypatch):
    """A notebook's HTML export (nbconvert) of a cell that displays a view: Chromium runs the inlined script and
    paints the coloured tokens, and the text fallback is gone from the rendered page."""
    import subprocess

    import matplotlib.image

    pytest.importorskip("circuitsvis")
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")
    monkeypatch.setattr(OfflineHTML, "library_shown", False)
    view = neuron_tokens_view(llama, {"seek": "I will lead and take power", "reject": "No thank you"}, [(1, 3), (0, 5)])
    cell = nbformat.v4.new_code_cell("view", execution_count=1, outputs=[nbformat.v4.new_output(
        "execute_result", data={"text/html": view._repr_html_(), "text/plain": repr(view)}, execution_count=1)])
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.v4.new_notebook(cells=[cell]))
    page = tmp_path / "nb.html"
    page.write_text(body)
    shot = tmp_path / "nb.png"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    subprocess.run([*common, "--window-size=1000,600", f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True,
                   timeout=120)
    rendered = subprocess.run([*common, "--dump-dom", page.as_uri()], check=True, capture_output=True, timeout=120, text=True).stdout
    assert f'id="{view.fallback_id}"' in body and f'id="{view.fallback_id}"' not in rendered   # the script removed it
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert ((pixels.max(-1) - pixels.min(-1)) > 0.3).mean() > 0.002
