import json
import re

import pytest
import torch

import persona_interp as pi
from persona_interp.report.views import (attention_heads_view, attention_patterns, neuron_activations,
                                         neuron_tokens_view)


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
    assert view._repr_html_() == view.body
    with pytest.raises(FileExistsError):
        view.save(path)
    view.save(path, force=True)


def test_attention_view_carries_patterns(llama, tmp_path):
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

    import matplotlib.image

    page = neuron_tokens_view(llama, {"seek": "I will lead and take power"}, [(1, 3), (0, 5)]).save(tmp_path / "n.html")
    shot = tmp_path / "n.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                    "--window-size=800,400", f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    saturation = pixels.max(-1) - pixels.min(-1)
    assert (saturation > 0.3).mean() > 0.002
