"""The pages that quote the main job's results, written from them: the README's findings
([`findings_markdown`][persona_interp.report.findings.findings_markdown]) and the findings page's tables (the report's
"Across personas" section), each between markers in the page,

    <!-- generated: NAME (the command that writes it) -->
    …
    <!-- end generated -->

which [`rewrite_generated`][persona_interp.report.findings.rewrite_generated] fills from a ``results.json`` and
nothing outside them (``persona-interp figures --results reports/results.json --docs README.md docs/findings.md``).

Examples:
    >>> results = load_results("reports/results.json")
    >>> page = "Intro.\\n<!-- generated: findings (by hand) -->\\nold\\n<!-- end generated -->\\nOutro.\\n"
    >>> new = rewrite_generated(page, results)
    >>> new.startswith("Intro.\\n<!-- generated: findings (by hand) -->\\n\\nSeven personas"), new.endswith("<!-- end generated -->\\nOutro.\\n")
    (True, True)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from persona_interp.data.files import write_text
from persona_interp.data.personas import MBTI_AXES
from persona_interp.evaluation.rows import BudgetWinnerRow, ContrastRow
from persona_interp.report.markdown import across_personas_markdown
from persona_interp.report.results import RunResults
from persona_interp.report.summary import diagnostics_by_persona, is_mask

KINDS = {"mean_difference": "steering", "pca": "steering", "ode": "steering", "weight_edit": "steering",
         "lora": "LoRA", "prompt": "a prompt", "rag": "RAG"}   # a winning regime as the findings name it
HEADLINE = {"LoRA": "fine-tuning"}                             # … and in the bullet's heading
METHOD_NAMES = {"wanda": "Wanda", "contrastive_wanda": "Contrastive-Wanda", "contrastive_sparse": "Contrastive-Sparse (text rule)",
                "contrastive_sparse_code": "Contrastive-Sparse (code rule)"}
PAPER_OVERLAP = 0.01                    # the paper's "~1 %" of entries where opposing masks differ
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
TIMES = {0: "never", 1: "once", 2: "twice"}


def persona_list(personas: Sequence[str], conjunction: str = "and") -> str:
    """Personas as the findings name them: ``introversion–extraversion``, the four MBTI axes together when all are
    there, joined with commas and ``conjunction``.

    Examples:
        >>> persona_list(["power", "hallucination", "judging_perceiving"])
        'power, hallucination and judging–perceiving'
        >>> persona_list(["wealth", *MBTI_AXES], "or")
        'wealth or the four MBTI axes'
    """
    names = [p for p in personas if not set(MBTI_AXES) <= set(personas) or p not in MBTI_AXES]
    words = [p.replace("_", "–") for p in names] + (["the four MBTI axes"] if set(MBTI_AXES) <= set(personas) else [])
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _ci(row: BudgetWinnerRow | ContrastRow) -> str:
    return row.estimate("difference").signed(2)


def _ratio(value: float) -> str:
    """A perplexity ratio to two significant figures, in plain digits (``3.8``, ``86``, ``6300``)."""
    rounded = float(f"{value:.2g}")
    return f"{rounded:.0f}" if rounded >= 10 else f"{rounded:g}"


def _span(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    low, high = min(values) * scale, max(values) * scale
    return f"{low:.{digits}f}–{high:.{digits}f}" if f"{low:.{digits}f}" != f"{high:.{digits}f}" else f"{low:.{digits}f}"


def _budgets(budgets: Sequence[float]) -> str:
    words = [f"{b:g}" for b in budgets]
    return "KL ≤ " + (words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}")


def _winners_bullet(results: RunResults) -> str:
    """Which kind of regime wins each damage budget, and where a mask does."""
    won: dict[str, dict[str, list[BudgetWinnerRow]]] = {}              # kind -> persona -> its wins
    masks: list[tuple[str, BudgetWinnerRow]] = []
    budgets = {persona: [w for w in entry.budget_winners if isinstance(w, BudgetWinnerRow)]
               for persona, entry in results.personas.items()}
    for persona, wins in budgets.items():
        for w in wins:
            if is_mask(w.pair):
                masks.append((persona, w))
            else:
                won.setdefault(KINDS.get(w.regime, w.regime), {}).setdefault(persona, []).append(w)
    heading = " or ".join(HEADLINE.get(kind, kind) for kind in won) or "no regime but a mask"
    sentences = []
    for kind, by_persona in won.items():
        every = [p for p, wins in by_persona.items() if len(wins) == len(results.personas[p].budget_winners)]
        parts = [f"{kind} wins every damage budget on {persona_list(every)}"] if every else []
        for persona, wins in by_persona.items():
            if persona not in every:
                picks = {w.pair: w for w in wins}
                effects = ", ".join(_ci(w) if len(picks) == 1 else f"{pair} {_ci(w)}" for pair, w in picks.items())
                parts.append(f"{kind} wins {persona_list([persona])} at {_budgets([w.budget for w in wins])} ({effects})")
        sentences += parts
    joined = "; ".join(sentences)
    text = (f"- **At equal damage, {heading} wins, and a mask wins {TIMES.get(len(masks), f'{len(masks)} times')}.** "
            + joined[:1].upper() + joined[1:] + ".")
    if masks:
        cases = [f"{persona_list([persona])} at {_budgets([w.budget])}: {METHOD_NAMES.get(w.regime, w.regime)} "
                 f"{'with its prompt (the paper' + chr(39) + 's protocol)' if w.pair.endswith('+prompt') else 'alone'} "
                 f"separates the poles by {_ci(w)} nats/token" for persona, w in masks]
        text += f" The exception{' is' if len(cases) == 1 else 's are'} " + "; ".join(cases) + "."
    return text


def _paper_bullet(results: RunResults, rho: float, method: str = "contrastive_wanda") -> str | None:
    """What the paper's masks at ``rho`` do with the prompt, and what one pole's mask costs."""
    pair = f"{method}@{rho:g}"
    groups: dict[str, list[str]] = {"adds": [], "only": [], "none": []}
    worst: list[tuple[float, float]] = []                               # per persona: the worse pole's KL, perplexity ×
    for persona, entry in results.personas.items():
        contrasts = {row.pair: row for row in entry.contrasts}
        if f"{pair}+prompt" not in contrasts:
            continue
        added = {r.condition: r for r in entry.prompt_additions if r.side == "seek − reject"}.get(f"{pair}+prompt")
        if not contrasts[f"{pair}+prompt"].difference_low > 0:
            groups["none"].append(persona)
        else:
            groups["adds" if added is not None and added.added_low > 0 else "only"].append(persona)
        table = {row.condition: row for row in entry.table}
        poles = [table[f"{method}-{side}@{rho:g}"] for side in ("seek", "reject")]
        measured = [(row.kl, 1 + row.perplexity_change) for row in poles if row.kl is not None and row.perplexity_change is not None]
        if len(measured) == len(poles):
            worst.append(max(measured))
    if not any(groups.values()):
        return None
    separate = [p for p in results.personas if p in groups["adds"] + groups["only"]]
    notes = ([f"adding nothing detectable to the prompt on {persona_list(groups['only'])}"] if groups["only"] else []) + \
            ([f"not detectably on {persona_list(groups['none'], 'or')}"] if groups["none"] else [])
    text = f"- **The paper's masks (ρ = {rho:g})** with the prompt " + (
        f"separate the poles on {persona_list(separate)}" + (f" ({'; '.join(notes)})" if notes else "")
        if separate else "do not detectably separate the poles on any persona")
    if worst:
        n = sum(len(g) for g in groups.values())
        kls, ratios = [kl for kl, _ in worst], [ratio for _, ratio in worst]
        limit = max(results.config.damage_budgets or [0.0])
        verdict = ("far outside the damage budgets" if min(kls) > limit
                   else f"not all of them outside the largest damage budget (KL ≤ {limit:g})")
        text += (f", but in {'every persona' if len(worst) == n else f'{len(worst)} of the {n} personas'} one pole's mask "
                 f"costs KL {_span(kls)} nats/token (perplexity ×{_ratio(min(ratios))} to ×{_ratio(max(ratios))}): {verdict}")
    return text + "."


def _overlap_bullet(results: RunResults) -> str | None:
    """How much opposing masks differ, like with like, against the paper's ~1 % and the ReLU construction range (compared
    at full precision, not at the table's 0.1 %)."""
    rows = [(persona, r) for persona, diag in diagnostics_by_persona(results).items() for r in diag.overlap if r.kind == "all"]
    share = {variant: [r.differ for _, r in rows if r.variant == variant]
             for variant in ("wanda (per pole)", "contrastive_wanda softplus τ=2", "contrastive_wanda relu")}
    relu = [(persona, r.differ, r.bound_low, r.bound_high) for persona, r in rows
            if r.variant == "contrastive_wanda relu" and r.bound_low is not None and r.bound_high is not None]
    if not share["wanda (per pole)"] or not share["contrastive_wanda softplus τ=2"] or not relu:
        return None
    small = share["wanda (per pole)"] + share["contrastive_wanda softplus τ=2"]
    order = ("the order of" if all(PAPER_OVERLAP / 10 <= s <= PAPER_OVERLAP * 10 for s in small) else "unlike")
    outside = [row for row in relu if not row[2] <= row[1] <= row[3]]                   # at full precision
    where = ("on every persona" if not outside
             else f"on {len(relu) - len(outside)} of the {len(relu)} personas (not on "
                  + "; ".join(f"{persona_list([p])}: {100 * differ:.2f} % against {100 * low:.2f}–{100 * high:.2f} %"
                              for p, differ, low, high in outside) + ")")
    return (f"- **Opposing masks' overlap, like with like:** per-pole Wanda masks differ in "
            f"{_span(share['wanda (per pole)'], 100)} % of entries and softplus Contrastive-Wanda in "
            f"{_span(share['contrastive_wanda softplus τ=2'], 100)} %, {order} the paper's \"~1 %\"; ReLU Contrastive-Wanda's "
            f"{_span([differ for _, differ, _, _ in relu], 100)} % lies, {where}, inside the range its construction gives whatever the "
            "persona.")


def _statistic_bullet(results: RunResults) -> str | None:
    """On which personas the pole whose mask breaks the model changes with the per-sample statistic."""
    breaks = {persona: {r.breaks for r in diag.statistics} for persona, diag in diagnostics_by_persona(results).items()
              if len({r.statistic for r in diag.statistics}) > 1}
    if not breaks:
        return None
    flips = [persona for persona, poles in breaks.items() if len(poles) > 1]
    if not flips:
        return (f"- **Which pole's mask breaks the model does not depend on the per-sample statistic** on any of "
                f"{persona_list(list(breaks))}.")
    return (f"- **Which pole's mask breaks the model depends on the per-sample statistic** on {persona_list(flips)} "
            "(the paper's norm grows with answer length; by the length-fair RMS the other pole's mask breaks it).")


def findings_markdown(results: RunResults) -> str:
    """The README's findings of a main-job run: what was run (personas, test items), then one bullet per question
    (which regime wins at equal damage and where a mask does, what the paper's masks do and cost, how much opposing
    masks differ like with like, and whether the statistic decides which pole's mask breaks the model), every
    number and verdict formatted from ``results``; a bullet whose figures the run lacks is left out.

    Examples:
        >>> text = findings_markdown(load_results("reports/results.json"))
        >>> print(text.splitlines()[0])
        Seven personas (power, wealth, hallucination and the four MBTI axes), 100 test items each (MBTI: 65), damage as KL on neutral texts:
        >>> print(text.splitlines()[-1][:105])
        - **Which pole's mask breaks the model depends on the per-sample statistic** on wealth, hallucination and
    """
    personas = list(results.personas)
    usual = results.personas[personas[0]].n_test
    others: dict[int, list[str]] = {}
    for persona, entry in results.personas.items():
        if entry.n_test != usual:
            others.setdefault(entry.n_test, []).append(persona)
    exceptions = ", ".join(f"{'MBTI' if set(ps) == set(MBTI_AXES) else persona_list(ps)}: {n}" for n, ps in others.items())
    count = NUMBERS.get(len(personas), str(len(personas)))
    lines = [f"{count[0].upper() + count[1:]} personas ({persona_list(personas)}), {usual} test items each"
             + (f" ({exceptions})" if exceptions else "") + ", damage as KL on neutral texts:", "",
             _winners_bullet(results)]
    lines += [bullet for bullet in (*(_paper_bullet(results, rho) for rho in results.config.sparsities or ()),
                                    _overlap_bullet(results), _statistic_bullet(results)) if bullet is not None]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[RunResults], str]] = {"findings": findings_markdown, "across-personas": across_personas_markdown}
START, END = "<!-- generated: ", "<!-- end generated -->"
BLOCK = re.compile(r"^<!-- generated: (?P<name>[\w-]+) \((?P<command>[^)\n]*)\) -->\n(?P<body>.*?)^<!-- end generated -->$",
                   re.M | re.S)


def rewrite_generated(text: str, results: RunResults) -> str:
    """``text`` with every generated block's body (the lines between ``<!-- generated: NAME (COMMAND) -->`` and
    ``<!-- end generated -->``) written again from ``results`` by the block's renderer (``findings``:
    [`findings_markdown`][persona_interp.report.findings.findings_markdown], ``across-personas``:
    [`across_personas_markdown`][persona_interp.report.markdown.across_personas_markdown]), between blank lines;
    everything outside the blocks stays as it is. A marker without its pair, or a block of an unknown name, is an
    error naming it.

    Examples:
        >>> rewrite_generated("<!-- generated: nothing (x) -->\\n<!-- end generated -->\\n", load_results("reports/results.json"))
        Traceback (most recent call last):
        ...
        ValueError: unknown generated block 'nothing': use one of ['findings', 'across-personas']
    """
    blocks = list(BLOCK.finditer(text))
    starts, ends = text.count(START), text.count(END)
    if starts != len(blocks) or ends != len(blocks):
        raise ValueError(f"{starts} '{START}…' and {ends} '{END}' marker(s) but {len(blocks)} whole block(s): each block "
                         f"is a '{START}NAME (COMMAND) -->' line, its body and a '{END}' line, none inside another")
    for block in blocks:
        if block["name"] not in BLOCKS:
            raise ValueError(f"unknown generated block {block['name']!r}: use one of {list(BLOCKS)}")
    return BLOCK.sub(lambda m: f"{m.group(0)[:m.start('body') - m.start()]}\n{BLOCKS[m['name']](results).strip(chr(10))}\n\n{END}",
                     text)


def rewrite_pages(pages: Sequence[Path], results: RunResults) -> list[Path]:
    """Rewrite the generated blocks of each page in ``pages`` from ``results``
    ([`rewrite_generated`][persona_interp.report.findings.rewrite_generated]); a page without blocks is an error.
    Returns the pages whose text changed."""
    changed = []
    for page in pages:
        text = Path(page).read_text(encoding="utf-8")
        if START not in text:
            raise ValueError(f"{page} has no generated block ('{START}NAME (COMMAND) -->' … '{END}')")
        try:
            new = rewrite_generated(text, results)
        except ValueError as error:
            raise ValueError(f"{page}: {error}") from None
        if new != text:
            write_text(Path(page), new)
            changed.append(Path(page))
    return changed
