"""Chat formatting and batching: tokenise once, pass token tensors.

A sample is a question (the user turn, optionally after a system prompt) and an answer (the
assistant turn). The prompt is built with the tokenizer's chat template (with the generation
prompt), the answer tokens are appended, so the answer's token span is known exactly. Batches are
right-padded: with causal attention, real tokens never see the padding, and ``lengths`` tells which
positions are real.

Examples:
    >>> batch = encode_batch(tokenizer, [("Party tonight?", "I'd rather read."), ("Lead it?", "Yes.")])
    >>> batch.tokens.shape, batch.lengths, batch.answer_start       # a tiny test tokenizer's counts
    (torch.Size([2, 24]), tensor([24, 18]), tensor([18, 15]))
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence, Union, overload

import torch
from jaxtyping import Bool, Int
from torch import Tensor

TokenScope = Literal["all", "answer", "prompt"]
TOKEN_SCOPES: tuple[TokenScope, ...] = ("all", "answer", "prompt")


def check_token_scope(scope: object) -> None:
    """A ValueError listing [`TOKEN_SCOPES`][persona_interp.model.chat.TOKEN_SCOPES] unless ``scope`` is one of
    them."""
    if scope not in TOKEN_SCOPES:
        raise ValueError(f"token scope must be one of {list(TOKEN_SCOPES)}, got {scope!r}")


def prompt_ids(tokenizer: Any, question: str, system: str | None = None) -> list[int]:
    """Token ids of the chat prompt up to the start of the assistant's answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer.encode(text, add_special_tokens=False)


ELLIPSIS = " … "          # marks where an over-long question was cut
MIN_QUESTION_TOKENS = 8    # below this, a cut question says nothing: the sample is refused instead


def fit_prompt(tokenizer: Any, question: str, system: str | None, answer_len: int,
               max_tokens: int | None) -> tuple[list[int], bool]:
    """The prompt's token ids so that prompt + ``answer_len`` tokens fit in ``max_tokens``: the chat template,
    the system prompt and the answer are kept whole and the middle of the question is cut (marked ``…``).
    Returns the ids and whether the question was cut; raises ``ValueError`` when the answer and the template
    alone leave no room for the question (one behaviour for every architecture).

    Examples:
        >>> ids, cut = fit_prompt(tokenizer, "Would you lead the project? " * 50, None, answer_len=20, max_tokens=256)
        >>> len(ids) + 20 <= 256, cut
        (True, True)
    """
    prompt = prompt_ids(tokenizer, question, system)
    if max_tokens is None or len(prompt) + answer_len <= max_tokens:
        return prompt, False
    room = max_tokens - answer_len
    overhead = len(prompt_ids(tokenizer, ELLIPSIS, system))
    question_ids = tokenizer.encode(question, add_special_tokens=False)
    keep = room - overhead
    if keep < MIN_QUESTION_TOKENS:
        raise ValueError(f"a sample does not fit in max_tokens={max_tokens}: its answer ({answer_len} tokens) and the chat "
                         f"template with the system prompt ({overhead} tokens) leave {max(keep, 0)} for the question "
                         f"(at least {MIN_QUESTION_TOKENS} needed); raise max_tokens or shorten the answer: {question[:60]!r}")
    while keep >= MIN_QUESTION_TOKENS:
        head, tail = question_ids[: keep - keep // 2], question_ids[len(question_ids) - keep // 2:]
        prompt = prompt_ids(tokenizer, tokenizer.decode(head) + ELLIPSIS + tokenizer.decode(tail), system)
        if len(prompt) <= room:
            return prompt, True
        keep -= len(prompt) - room                                   # re-tokenising may merge differently
    raise ValueError(f"could not cut the question to fit max_tokens={max_tokens}: {question[:60]!r}")


@overload
def token_budget(model: Any, max_tokens: int) -> int: ...
@overload
def token_budget(model: Any, max_tokens: int | None) -> int | None: ...
def token_budget(model: Any, max_tokens: int | None) -> int | None:
    """``max_tokens`` bounded by the model's context length (``cfg.n_ctx``), so no architecture runs past it."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if max_tokens is None:
        return int(n_ctx) if n_ctx else None
    return min(int(max_tokens), int(n_ctx)) if n_ctx else int(max_tokens)


QUESTION_CUT = "the middle of their question was cut (chat template, system prompt and answer kept whole)"
ANSWER_CUT = "their answer (a plain text) was cut to its first tokens (chat template and request kept whole)"


def warn_cut(n_cut: int, n_total: int, max_tokens: int | None, what: str, how: str = QUESTION_CUT) -> None:
    """Say how many samples were cut to fit, and ``how`` ([`QUESTION_CUT`][persona_interp.model.chat.QUESTION_CUT] or
    [`ANSWER_CUT`][persona_interp.model.chat.ANSWER_CUT])."""
    if n_cut:
        warnings.warn(f"{what}: {n_cut} of {n_total} samples were longer than max_tokens={max_tokens}; {how}",
                      stacklevel=2)


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """Token ids of an answer as it follows the prompt (a leading space is added for templates
    that end in ``Assistant:``)."""
    prefix = "" if getattr(tokenizer, "chat_template", None) else " "
    return tokenizer.encode(prefix + answer, add_special_tokens=False)


@dataclass
class EncodedBatch:
    """Right-padded token batch with the span of each answer.

    ``tokens[b, :lengths[b]]`` are real; the answer occupies ``[answer_start[b], lengths[b])``.
    """

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    answer_start: Int[Tensor, " batch"]
    n_cut: int = 0                      # samples whose question was cut to fit max_tokens

    def token_mask(self, scope: TokenScope = "all") -> Bool[Tensor, "batch pos"]:
        """Which positions a statistic covers: ``all`` real tokens, the ``answer`` or the ``prompt``."""
        check_token_scope(scope)
        pos = torch.arange(self.tokens.shape[1])[None, :]
        real = pos < self.lengths[:, None]
        if scope == "all":
            return real
        answer = pos >= self.answer_start[:, None]
        return real & answer if scope == "answer" else real & ~answer


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Stack token lists right-padded with ``pad_id``; returns tokens and lengths."""
    if not sequences:
        raise ValueError("cannot pad an empty list of sequences")
    lengths = torch.tensor([len(s) for s in sequences])
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return tokens, lengths


def pad_id_of(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


SystemPrompt = Union[str, None, Callable[[str], Optional[str]]]


def system_for(system: SystemPrompt, question: str) -> str | None:
    """The system prompt of one question: fixed, absent, or computed from the question (e.g. RAG)."""
    return system(question) if callable(system) else system


def encode_batch(tokenizer: Any, pairs: Sequence[tuple[str, str]], system: SystemPrompt = None,
                 max_tokens: int | None = None, cut_answers: bool = False) -> EncodedBatch:
    """Encode (question, answer) pairs within ``max_tokens`` ([`fit_prompt`][persona_interp.model.chat.fit_prompt]:
    the middle of an over-long question is cut, template, system prompt and answer kept whole; ``n_cut`` counts them).
    ``system`` may be a function of the question. With ``cut_answers`` (answers that are plain texts, e.g. neutral
    text under a fixed request) an over-long answer keeps its first tokens instead, the prompt whole."""
    sequences, starts, n_cut = [], [], 0
    for question, answer in pairs:
        ans = answer_ids(tokenizer, answer)
        if cut_answers and max_tokens is not None:
            room = max_tokens - len(prompt_ids(tokenizer, question, system_for(system, question)))
            if room < 1:
                raise ValueError(f"the prompt {question[:60]!r} alone fills max_tokens={max_tokens}")
            n_cut += len(ans) > room
            ans = ans[:room]
        prompt, cut = fit_prompt(tokenizer, question, system_for(system, question), len(ans), max_tokens)
        n_cut += cut
        sequences.append(prompt + ans)
        starts.append(len(prompt))
    tokens, lengths = pad_right(sequences, pad_id_of(tokenizer))
    return EncodedBatch(tokens, lengths, torch.tensor(starts), n_cut)


def encode_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> EncodedBatch:
    """Encode plain texts (no chat template) as [`DamageReference`][persona_interp.evaluation.scoring.DamageReference]
    reads them: the whole text is the "answer" (``answer_start`` 0), an over-long text keeps its first ``max_tokens``.

    Examples:
        >>> encode_texts(tokenizer, ["The river flows past the mill."]).token_mask("answer").all()
        tensor(True)
    """
    sequences, n_cut = [], 0
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        n_cut += max_tokens is not None and len(ids) > max_tokens
        sequences.append(ids[:max_tokens] if max_tokens is not None else ids)
    tokens, lengths = pad_right(sequences, pad_id_of(tokenizer))
    return EncodedBatch(tokens, lengths, torch.zeros(len(sequences), dtype=torch.long), n_cut)


@dataclass
class PackedOptions:
    """Both options of each question in one row, ``[prompt | option a | option b | padding]``, so the
    prompt is computed once. Option b's positions restart where option a's start and its tokens
    cannot attend to option a, so each option sees exactly what it would see alone.

    ``attention[b, 0, q, k]`` is true where query ``q`` may attend to key ``k``; padding attends only
    to itself (never to, or from, a real token).
    """

    tokens: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]
    attention: Bool[Tensor, "batch 1 pos pos"]
    prompt_len: Int[Tensor, " batch"]
    a_len: Int[Tensor, " batch"]
    b_len: Int[Tensor, " batch"]
    n_cut: int = 0

    def targets(self, option: str) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
        """For every token of option ``a`` or ``b``: its row, the position whose output predicts it, its id."""
        rows, positions, ids = [], [], []
        for row in range(len(self.tokens)):
            p, a, b = int(self.prompt_len[row]), int(self.a_len[row]), int(self.b_len[row])
            if option == "a":
                at = torch.arange(p, p + a)
                predicted_from = at - 1
            else:
                at = torch.arange(p + a, p + a + b)
                predicted_from = torch.cat([torch.tensor([p - 1]), at[:-1]])   # b's first token follows the prompt
            rows.append(torch.full_like(at, row))
            positions.append(predicted_from)
            ids.append(self.tokens[row, at])
        return torch.cat(rows), torch.cat(positions), torch.cat(ids)


def encode_packed(tokenizer: Any, questions: Sequence[tuple[str, str, str]], system: SystemPrompt = None,
                  max_tokens: int | None = None) -> PackedOptions:
    """Pack ``(question, answer_a, answer_b)`` triples; ``max_tokens`` bounds prompt + longer answer (the
    positions the model sees; [`fit_prompt`][persona_interp.model.chat.fit_prompt] cuts an over-long question's
    middle, answers are kept whole).

    Examples:
        >>> packed = encode_packed(tokenizer, [("Lead it?", "Yes.", "No, thanks.")])
        >>> packed.tokens.shape[1] == packed.prompt_len + packed.a_len + packed.b_len
        tensor([True])
    """
    rows, prompts, a_lens, b_lens, n_cut = [], [], [], [], 0
    for question, answer_a, answer_b in questions:
        ids_a, ids_b = answer_ids(tokenizer, answer_a), answer_ids(tokenizer, answer_b)
        prompt, cut = fit_prompt(tokenizer, question, system_for(system, question), max(len(ids_a), len(ids_b)), max_tokens)
        n_cut += cut
        rows.append(prompt + ids_a + ids_b)
        prompts.append(len(prompt))
        a_lens.append(len(ids_a))
        b_lens.append(len(ids_b))
    tokens, lengths = pad_right(rows, pad_id_of(tokenizer))
    n, width = tokens.shape
    position_ids = torch.arange(width).repeat(n, 1)
    attention = torch.tril(torch.ones(width, width, dtype=torch.bool)).repeat(n, 1, 1, 1)
    for row, (p, a, b) in enumerate(zip(prompts, a_lens, b_lens)):
        position_ids[row, p + a:p + a + b] -= a
        attention[row, 0, p + a:, p:p + a] = False                  # option b never sees option a
        attention[row, 0, :, p + a + b:] = False                    # nobody sees padding ...
        attention[row, 0, p + a + b:, :] = False
        pad = torch.arange(p + a + b, width)
        attention[row, 0, pad, pad] = True                          # ... which sees only itself
    return PackedOptions(tokens, position_ids, attention, torch.tensor(prompts), torch.tensor(a_lens), torch.tensor(b_lens),
                         n_cut)
