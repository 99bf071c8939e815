"""A planted model: a one-layer Llama whose MLP units are set by hand, so the persona units are known.

Vocabulary (word-level tokenizer, one token per word): template words, question words ``Q``, seek words ``S``,
reject words ``R`` and neutral words ``N`` that follow each other in a fixed cycle (``N[m]`` is followed by
``N[m+1]``). Each token's embedding is one-hot in the first dimensions, plus a large constant dimension that makes
the final RMSNorm nearly a constant scale; attention writes nothing (``o_proj = 0``), so the model is a bigram
model computed by the MLP (one gated unit reads one-hot tokens: ``h = silu(gate·x)·(up·x)`` is exactly 0 on a
token it does not read). The logits read a few output features, each a random unit direction of the residual:

* **planted** units (4 per pole): a seek unit fires 1.0 on every seek word (0.15 on reject words, 0.1 on neutral
  words) and writes the "seek word next" feature; reject units mirror it. Removing the seek units lowers the
  seek answer's log-prob: they carry the persona.
* **distractor** units (8 per pole): unit ``m`` fires 1.0 on the neutral word ``N[m]`` and writes the
  "``N[m+1]`` next" feature (all of the neutral text's prediction), and fires 0.5 on its pole's words and never on
  the other pole's. So its contrast z is as large as a planted unit's (larger: it is exactly 0 on the other pole),
  its plain Wanda tie-break is 0, yet removing it moves the A/B margin the wrong way a little and costs a lot of
  neutral KL.
* **background** units (the other 32): small random reads of every token, small random writes.

Example:
    >>> planted = build_planted(seed=0)
    >>> planted.units["seek"], planted.distractors["seek"]
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from persona_interp.data.personas import PersonaDataset, PersonaItem

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
ROLES = ["user", "assistant", "system"]
QUESTION = ["would", "you", "rather", "choose", "today", "now", "please", "tell"]
SEEK = ["power", "control", "lead", "command", "rule", "dominate", "authority", "influence"]
REJECT = ["humble", "modest", "serve", "help", "share", "quiet", "gentle", "support"]
NEUTRAL = ["the", "river", "flows", "past", "old", "stone", "mill", "into", "green", "valley", "where", "birds",
           "sing", "every", "morning", "light"]
VOCAB = SPECIAL + ROLES + QUESTION + SEEK + REJECT + NEUTRAL
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' ' + message['content'] + ' <|im_end|> '}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)

D_TOKENS = 64          # one-hot token dimensions
CONST = 64             # the constant dimension
D_MODEL = 128          # the rest (65..127) holds the output features
D_MLP = 64
N_PLANTED = 4          # per pole
N_DISTRACT = 8         # per pole: one per neutral transition
CONST_SIZE = 40.0      # keeps the RMS of the residual nearly constant


@dataclass
class Planted:
    """The planted model, its data and which down_proj input channels (MLP units) play which part."""

    model: object
    units: dict[str, list[int]]          # side -> the units that carry that pole (the other pole's mask removes them)
    distractors: dict[str, list[int]]    # side -> units that differ toward that pole but carry the neutral text
    calibration: PersonaDataset
    evaluation: PersonaDataset
    fit_texts: list[str]                 # neutral texts the methods may use
    eval_texts: list[str]                # neutral texts the damage is measured on (disjoint)

    layer: int = 0
    down: str = "blocks.0.mlp.down"


def word_tokenizer(folder):
    """A word-level tokenizer of :data:`VOCAB` with a chat template, saved and reloaded from ``folder``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    core.pre_tokenizer = WhitespaceSplit()
    core.add_special_tokens(SPECIAL[:3])
    fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", unk_token="[UNK]")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _words(rng: random.Random, pool: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(pool) for _ in range(rng.randint(low, high)))


def persona_items(n: int, seed: int, name: str) -> PersonaDataset:
    """``n`` items: a question of question words, a seek answer of seek words, a reject answer of reject words."""
    rng = random.Random(seed)
    items = [PersonaItem(_words(rng, QUESTION, 3, 6), _words(rng, SEEK, 3, 8), _words(rng, REJECT, 3, 8)) for _ in range(n)]
    return PersonaDataset(name, items)


def neutral_texts(n: int, seed: int) -> list[str]:
    """``n`` runs of the neutral cycle from random starts, 10 to 20 words long."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        start, length = rng.randrange(len(NEUTRAL)), rng.randint(10, 20)
        texts.append(" ".join(NEUTRAL[(start + i) % len(NEUTRAL)] for i in range(length)))
    return texts


def _directions(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` orthonormal directions of the output dimensions (65..127), as rows ``[n, D_MODEL]``."""
    raw = torch.randn(D_MODEL - CONST - 1, n, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(raw)
    out = torch.zeros(n, D_MODEL, dtype=torch.float64)
    out[:, CONST + 1:] = q.T
    return out


def build_planted(tokenizer, seed: int = 0) -> Planted:
    """The planted model (a TransformerBridge over a one-layer Llama) and its data; unit roles drawn by ``seed``."""
    import transformers as tf
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=len(VOCAB), hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                            tie_word_embeddings=False, rms_norm_eps=1e-6)
    hf = tf.LlamaForCausalLM(config).eval()
    token = {w: i for i, w in enumerate(VOCAB)}
    order = torch.randperm(D_MLP, generator=generator).tolist()         # unit roles at random positions
    units = {"seek": order[:N_PLANTED], "reject": order[N_PLANTED:2 * N_PLANTED]}
    distractors = {"seek": order[8:8 + N_DISTRACT], "reject": order[16:16 + N_DISTRACT]}
    background = order[24:]
    features = _directions(2 + len(NEUTRAL), generator)                  # seek next, reject next, N[m] next
    f_seek, f_reject, f_next = features[0], features[1], features[2:]

    embed = torch.zeros(len(VOCAB), D_MODEL, dtype=torch.float64)
    embed[torch.arange(len(VOCAB)), torch.arange(len(VOCAB))] = 1.0
    embed[:, CONST] = CONST_SIZE
    scale = math.sqrt((1 + CONST_SIZE ** 2) / D_MODEL)                   # the RMS of an embedding
    gate = torch.zeros(D_MLP, D_MODEL, dtype=torch.float64)
    up = torch.zeros(D_MLP, D_MODEL, dtype=torch.float64)
    down = torch.zeros(D_MODEL, D_MLP, dtype=torch.float64)
    silu4 = 4 / (1 + math.exp(-4))

    def fire(unit: int, words: list[str], value: float) -> None:        # h = value on these words (x_t = 1/scale)
        for w in words:
            gate[unit, token[w]] = 4 * scale
            up[unit, token[w]] = value * scale / silu4

    for side, pole, other, feature in (("seek", SEEK, REJECT, f_seek), ("reject", REJECT, SEEK, f_reject)):
        for unit in units[side]:
            fire(unit, pole, 1.0)
            fire(unit, other, 0.15)
            fire(unit, NEUTRAL, 0.1)
            down[:, unit] = 1.5 * feature
    for m, unit in enumerate(distractors["seek"] + distractors["reject"]):
        side_words = SEEK if m < N_DISTRACT else REJECT
        neutral_index = 2 * (m % N_DISTRACT) + (m >= N_DISTRACT)         # seek: even words, reject: odd words
        fire(unit, side_words, 0.5)
        fire(unit, [NEUTRAL[neutral_index]], 1.0)
        down[:, unit] = 8.0 * f_next[(neutral_index + 1) % len(NEUTRAL)]
    for unit in background:
        gate[unit, :len(VOCAB)] = torch.randn(len(VOCAB), generator=generator, dtype=torch.float64) * scale
        up[unit, :len(VOCAB)] = torch.randn(len(VOCAB), generator=generator, dtype=torch.float64) * 0.3 * scale
        down[CONST + 1:, unit] = torch.randn(D_MODEL - CONST - 1, generator=generator, dtype=torch.float64) * 0.1
    lm_head = torch.zeros(len(VOCAB), D_MODEL, dtype=torch.float64)
    lm_head[[token[w] for w in SEEK]] += f_seek
    lm_head[[token[w] for w in REJECT]] += f_reject
    for m, w in enumerate(NEUTRAL):
        lm_head[token[w]] += f_next[m]

    layer = hf.model.layers[0]
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(embed)
        layer.self_attn.o_proj.weight.zero_()
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, hf.model.norm):
            norm.weight.fill_(1.0)
        hf.model.norm.weight.fill_(scale)                               # the final norm undoes the constant's scale
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(down)
        hf.lm_head.weight.copy_(lm_head)
    model = TransformerBridge.boot_transformers("planted-llama", hf_model=hf, tokenizer=tokenizer).eval()
    return Planted(model, units, distractors, persona_items(24, seed + 1, "planted"), persona_items(16, seed + 2, "planted-eval"),
                   neutral_texts(12, seed + 3), neutral_texts(12, seed + 4))


def unit_precision(model, mask, down: str, units: list[int]) -> float:
    """Precision at k (k = ``len(units)``) of a mask's removals in the ``down`` map, weights grouped by unit: each
    unit (an input column) scores the share of its column's ``|W|`` the mask removes; the ``k`` units with the
    highest shares (ties: the lower index) are the mask's top-k removed units, and the precision is the share of
    them in ``units``. Per-row masks remove the same count from every row, so a unit-level view needs the grouping;
    weighting by ``|W|`` ignores rows where a unit writes almost nothing.
    """
    from persona_interp.model.adapter import get_adapter

    weight = get_adapter(model).weight(down).abs().double()
    share = ((~mask.keep[down]).to(weight.device) * weight).sum(0) / weight.sum(0).clamp_min(1e-30)
    top = torch.argsort(share.cpu(), descending=True, stable=True)[:len(units)].tolist()
    return len(set(top) & set(units)) / len(units)
