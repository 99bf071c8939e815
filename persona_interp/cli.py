"""The ``persona-interp`` command line.

Examples:
    $ persona-interp reproduce --quick
    $ persona-interp collect --persona power --side seek --out sig_seek.safetensors
    $ persona-interp build-mask --method contrastive_wanda --seek s.safetensors --reject r.safetensors --sparsity 0.3 --out cw
    $ persona-interp collect --neutral --n 16 --out neutral.safetensors
    $ persona-interp build-mask --method retain_ratio --seek s.safetensors --reject r.safetensors \
          --neutral-signature neutral.safetensors --sparsity 0.01 --out rr
    $ persona-interp build-mask --method gradient --persona power --n-items 64 --n-neutral 16 --sparsity 0.01 --out g
    $ persona-interp inspect cw_seek.safetensors
    $ persona-interp analyse --persona power --quick --signatures results/signatures --out results/atlas_power
    $ persona-interp overlap --signatures results/signatures --out results/overlap
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel

from persona_interp.data.files import write_text
from persona_interp.data.personas import MBTI_AXES, SIDES, persona_names
from persona_interp.masks.builders import PHIS, RULES
from persona_interp.masks.registry import method_names
from persona_interp.model.adapter import parse_map_name
from persona_interp.model.chat import TOKEN_SCOPES
from persona_interp.model.load import DTYPE_NAMES
from persona_interp.signatures import STATISTICS


def _sparsity(text: str) -> float:
    """A sparsity: the fraction of weights removed, in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    """A count: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive count, got {text}")
    return value


def _layers(text: str) -> list[int]:
    """``3,5,7`` or ``10-19`` (inclusive)."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def _writable(path: Path, force: bool) -> Path:
    if path.exists() and not force:
        raise SystemExit(f"error: {path} exists; pass --force to overwrite it")
    return path


def _fit_texts(n: int) -> list[str]:
    """The ``n`` neutral texts damage-aware methods fit on: those after the main job's (full configuration's)
    reported and selection texts, so never the texts a report states or a search enforces its budgets on."""
    from persona_interp.data.personas import neutral_split
    from persona_interp.studies.config import ReproduceConfig

    config = ReproduceConfig()
    return neutral_split(config.n_neutral, config.n_selection_neutral, n).fit


def cmd_collect(args: argparse.Namespace) -> None:
    from persona_interp import collect_signatures
    from persona_interp.data.personas import PersonaDataset, calibration_split

    if args.neutral and (args.persona or args.side or args.token_scope != "all"):
        raise SystemExit("error: --neutral collects on neutral texts: leave out --persona, --side and --token-scope")
    if not args.neutral and not (args.persona and args.side):
        raise SystemExit("error: collect needs --persona and --side (or --neutral for a neutral-text signature)")
    out = _writable(Path(args.out), args.force)
    data: list[str] | PersonaDataset
    if args.neutral:
        data = _fit_texts(args.n or 16)
    else:
        data, _ = calibration_split(args.persona, seed=args.seed, n_fit=args.n)      # never a test or validation item
    sig = collect_signatures(_model(args), data, "neutral" if args.neutral else args.side, token_scope=args.token_scope,
                             batch_size=args.batch_size, max_tokens=args.max_tokens)
    sig.save(out, overwrite=True)
    print(f"wrote {out}: {sig.n_samples} samples, {sig.n_tokens} tokens")


BUILD_INPUTS = {   # need: (the options that give it, how to ask for it)
    "neutral_signatures": (("neutral_signature",), "--neutral-signature PATH (persona-interp collect --neutral --out PATH)"),
    "calibration_items": (("persona", "n_items"), "--persona NAME (and --n-items N)"),
    "neutral_texts": (("n_neutral",), "--n-neutral N"),
}


def cmd_build_mask(args: argparse.Namespace) -> None:
    from persona_interp import Signature
    from persona_interp.data.personas import calibration_split
    from persona_interp.masks.builders import check_pole
    from persona_interp.masks.registry import MethodInputs, method_spec

    spec = method_spec(args.method)
    if "signatures" in spec.needs and spec.contrast and not (args.seek and args.reject):
        raise SystemExit(f"error: --method {args.method} needs --seek and --reject signatures")
    if "signatures" in spec.needs and not (args.seek or args.reject):
        raise SystemExit(f"error: --method {args.method} needs --seek (or --reject) signature")
    if "signatures" not in spec.needs and (args.seek or args.reject):
        raise SystemExit(f"error: --method {args.method} uses no signatures; leave out --seek and --reject")
    for need, (names, ask) in BUILD_INPUTS.items():
        given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]
        if need in spec.needs and getattr(args, names[0]) is None:
            raise SystemExit(f"error: --method {args.method} needs {need.replace('_', ' ')}: pass {ask}")
        if need not in spec.needs and given:
            raise SystemExit(f"error: --method {args.method} uses no {need.replace('_', ' ')}; leave out {' and '.join(given)}")
    sides = ([side for side, given in zip(SIDES, (args.seek, args.reject)) if given] if spec.poles else [args.method])
    for side in sides:                                # before minutes of computing, not after
        _writable(Path(f"{args.out}_{side}.safetensors"), args.force)
    seek = Signature.load(args.seek).with_statistic(args.statistic) if args.seek else None
    reject = Signature.load(args.reject).with_statistic(args.statistic) if args.reject else None
    neutral = Signature.load(args.neutral_signature) if args.neutral_signature else None
    items = (list(calibration_split(args.persona, seed=args.seed, n_fit=args.n_items)[0])     # never a test or
             if args.persona else None)                                                          # validation item
    texts = _fit_texts(args.n_neutral) if args.n_neutral else None
    model = _model(args)
    for side, sig in zip(SIDES, (seek, reject)):    # swapped signatures are refused, whatever the method
        if sig is not None:
            check_pole(sig, side)
    options = {name: getattr(args, name) for name in spec.options if getattr(args, name, None) is not None}
    inputs = MethodInputs(seek, reject, neutral=neutral, items=items, neutral_texts=texts, persona=args.persona)
    built = spec.build(model, inputs, args.sparsity, modules=args.modules, layers=args.layers, **options)
    paths = {side: Path(f"{args.out}_{side}.safetensors") for side in built}
    for path in paths.values():
        _writable(path, args.force)
    for side, mask in built.items():
        mask.save(paths[side], overwrite=True)
        print(f"wrote {paths[side]}: {len(mask.keep)} maps, sparsity {mask.sparsity():.4f}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from persona_interp import Mask, Signature
    from persona_interp.data.files import read_metadata
    from persona_interp.masks.mask import FORMAT as MASK_FORMAT

    kind = read_metadata(args.path, "mask or signature").get("format")
    if kind == MASK_FORMAT:
        mask = Mask.load(args.path)
        print(f"mask: {mask.meta}\nmaps: {len(mask.keep)}, overall sparsity {mask.sparsity():.4f}")
        by_module: dict[str, list[int]] = {}
        for name, keep in mask.keep.items():
            entry = by_module.setdefault(parse_map_name(name)[1], [0, 0])
            entry[0] += int(keep.sum())
            entry[1] += keep.numel()
        for module, (kept, total) in by_module.items():
            print(f"  {module}: {total - kept} of {total} weights removed ({1 - kept / total:.4f})")
    elif kind and kind.startswith("persona_interp.signature"):
        sig = Signature.load(args.path)
        print(f"signature: {sig.meta}\nsites: {len(sig.sums)}, maps: {len(sig.map_sites)}")
    else:
        raise SystemExit(f"error: {args.path} is neither a persona_interp mask nor a signature")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from persona_interp.studies.config import FULL, QUICK
    from persona_interp.studies.reproduce import reproduce

    config = dataclasses.replace(QUICK if args.quick else FULL)
    if args.personas:
        config.personas = args.personas
    if args.sparsities:
        config.sparsities = args.sparsities
    for key in ("n_test", "n_calibration", "seed", "batch_size"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if args.racing is not None:
        from persona_interp.evaluation.search import Racing

        config.racing = Racing(first=args.racing)
    out = Path(args.out or ("results/quick" if args.quick else "reports"))
    try:
        if args.dtype:
            config.dtype = args.dtype
        model = _model(args, config.dtype) if args.device or args.device_map else args.model
        report = reproduce(config, out, args.figures, force=args.force, resume=args.resume, allow_mixed=args.allow_mixed,
                           model=model)
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {report}")


def cmd_analyse(args: argparse.Namespace) -> None:
    from persona_interp.report.markdown import atlas_markdown
    from persona_interp.studies.atlas import persona_atlas
    from persona_interp.studies.config import QUICK_ATLAS, AtlasConfig

    paths = _study_paths(args, f"{args.persona}_")
    config = dataclasses.replace(QUICK_ATLAS if args.quick else AtlasConfig())
    if args.sparsity is not None:
        config.sparsity = args.sparsity
    config.causal = not args.localise_only
    for key in ("kinds", "modes", "ks", "seeds"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    config.prompts = config.prompts and not args.no_prompts
    signatures = _saved_signatures(Path(args.signatures), args.persona) if args.signatures else None
    atlas = persona_atlas(_model(args), args.persona, config, paths["figures"], signatures=signatures)
    _write_study(args, paths, atlas, atlas_markdown(atlas))


def _saved_signatures(folder: Path, persona: str) -> tuple:
    from persona_interp import Signature

    paths = [folder / f"{persona}_{side}.safetensors" for side in SIDES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"error: no saved signatures for {persona!r}: missing {', '.join(missing)} "
                         "(the main job writes them to REPORT_DIR/signatures)")
    return tuple(Signature.load(p) for p in paths)


def _signatures(args: argparse.Namespace, model: Any, persona: str) -> tuple:
    """The persona's (seek, reject) signatures: from ``--signatures`` if given, else collected from a seeded
    sample of ``--n-calibration`` items of the fit part of its training split (as the main job and ``analyse``)."""
    if args.signatures:
        return _saved_signatures(Path(args.signatures), persona)
    from persona_interp import collect_signatures
    from persona_interp.data.personas import calibration_split

    fit, _ = calibration_split(persona, seed=args.seed, n_fit=args.n_calibration)
    return tuple(collect_signatures(model, fit, side) for side in SIDES)


def cmd_overlap(args: argparse.Namespace) -> None:
    from persona_interp.report.markdown import overlap_markdown
    from persona_interp.studies.atlas import overlap_study

    paths = _study_paths(args, "overlap_")
    folder = Path(args.signatures)
    personas = args.personas or sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*_seek.safetensors")})
    if not personas:
        raise SystemExit(f"error: no *_seek.safetensors signatures in {folder}")
    signatures = {persona: _saved_signatures(folder, persona) for persona in personas}
    rows = overlap_study(_model(args), signatures, args.sparsities, paths["figures"])
    _write_study(args, paths, [row.model_dump() for row in rows], overlap_markdown(rows))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from persona_interp import Mask, load_neutral_texts, load_persona, random_mask
    from persona_interp.data.personas import persona_prompts
    from persona_interp.evaluation.evaluate import control_comparison, evaluate
    from persona_interp.interventions.conditions import Condition, MaskCondition, Prompt
    from persona_interp.report.markdown import TABLE_COLUMNS, control_rows, made_by, markdown_table
    from persona_interp.report.results import Provenance, model_name

    paths = _study_paths(args, f"{args.persona}_evaluate")
    model = _model(args)
    provenance = Provenance.collect(model, model_name(args.model), seed=args.seed)
    conditions: list[Condition] = [Condition()]
    if args.prompts:
        conditions += [Prompt(f"prompt-{side}", side=side, system=persona_prompts(args.persona, side)[0], pair="prompt")
                       for side in SIDES]
    masks = {}
    for path in args.masks or []:
        mask = Mask.load(path)
        try:
            mask.check_model(model)
        except Exception as error:                       # a mask of another model: say which file
            raise SystemExit(f"error: {path}: {error}") from None
        masks[Path(path).name.removesuffix(".safetensors")] = mask
    control = None
    if masks and not args.no_control:
        first = next(iter(masks.values()))
        control = MaskCondition(f"random@{first.meta.get('sparsity')}", regime="random",
                                mask=random_mask(model, first.sparsity(), seed=args.seed, like=first))
    groups: dict[str, list[str]] = {}                   # masks of one method and sparsity: a pair if one per side
    for name, mask in masks.items():
        groups.setdefault(f"{mask.meta.get('method')}@{mask.meta.get('sparsity')}", []).append(name)
    for pair, names in groups.items():
        sides = sorted(str(masks[n].meta.get("side")) for n in names)
        for name in names:
            side = masks[name].meta.get("side")
            conditions.append(MaskCondition(name, side=side, regime=masks[name].meta.get("method", "mask"), mask=masks[name],
                                            pair=pair if sides == sorted(SIDES) else None,
                                            control=control.name if control and side else None))
    if control:
        conditions.append(control)
    test = load_persona(args.persona, "test")
    if args.n_test:
        test = test.sample(args.n_test, seed=args.seed)
    ev = evaluate(model, list(test), conditions, persona=args.persona, neutral_texts=load_neutral_texts()[: args.n_neutral],
                  batch_size=args.batch_size)
    table, contrasts, controls = ev.table(), ev.contrasts(), control_comparison(ev)
    study = {"persona": args.persona, "n_test": len(test), "seed": args.seed, "masks": args.masks or [],
             "table": [row.model_dump() for row in table], "contrasts": [row.model_dump() for row in contrasts],
             "controls": [row.model_dump() for row in controls],
             "per_item": {name: item.model_dump() for name, item in ev.per_item().items()}}
    provenance = provenance.done()
    study["provenance"] = provenance.model_dump()
    markdown = "\n".join([f"## {args.persona}: {len(test)} test items (seed {args.seed})\n", made_by(provenance) + "\n",
                          markdown_table(table, TABLE_COLUMNS),
                          "\nSeek-minus-reject:\n", markdown_table(contrasts, ["pair", "n", "difference"]),
                          "\nAgainst the random control:\n",
                          markdown_table(control_rows(controls), ["condition", "control", "advantage", "beats_control"])])
    from persona_interp.report.figures import plot_accuracy

    plot_accuracy(table, paths["figures"] / f"{args.persona}_evaluate", title=f"{args.persona}: {len(test)} test items")
    _write_study(args, paths, study, markdown)


def cmd_figures(args: argparse.Namespace) -> None:
    from persona_interp.report.figures import plot_persona, plot_stability
    from persona_interp.report.results import load_results
    from persona_interp.report.summary import diagnostics_by_persona

    if args.out is None and not args.docs:
        raise SystemExit("error: figures needs --out (the figures folder), --docs (pages to rewrite) or both")
    if args.out is None and args.report:
        raise SystemExit("error: --report links its figures from --out: pass --out too")
    results = Path(args.results)
    if not results.is_file():
        raise SystemExit(f"error: {results} does not exist (the main job writes REPORT_DIR/results.json)")
    typed = load_results(results)                      # a damaged or partial file: an error naming it and the field
    if args.docs:
        from persona_interp.report.findings import Sources, rewrite_pages

        changed = rewrite_pages([Path(page) for page in args.docs], Sources(typed, results.parent))   # the studies beside it
        print(f"rewrote the generated blocks of {len(changed)} of {len(args.docs)} page(s) from {results}"
              + (f": {', '.join(map(str, changed))}" if changed else " (already up to date)"))
    if args.out is None:
        return
    written = []
    report = _writable(Path(args.report), args.force) if args.report else None
    for persona, entry in typed.personas.items():
        stems = [f"{persona}_accuracy", *([f"{persona}_frontier"] if entry.frontier else [])]
        for stem in stems:
            for suffix in (".png", ".svg"):
                _writable(Path(args.out) / f"{stem}{suffix}", args.force)
        written += plot_persona(persona, entry, args.out)
    if diagnostics_by_persona(typed):
        for suffix in (".png", ".svg"):
            _writable(Path(args.out) / f"stability{suffix}", args.force)
        written += plot_stability(typed, Path(args.out) / "stability")
    print(f"wrote {len(written)} files to {args.out}")
    if report is not None:
        from persona_interp.report.markdown import render_report

        print(f"wrote {render_report(typed, report, Path(args.out))}")


def _study_paths(args: argparse.Namespace, figures: str | None = None) -> dict[str, Path]:
    """PREFIX.md and PREFIX.json, checked before a long run starts, and the figures the run will write
    (``--figures``/``figures``*, by default in PREFIX_figures): existing ones are refused without ``--force``. With ``--force`` the old
    report is removed first, so an interrupted run never leaves it beside new figures (each file itself is
    written whole or not at all). Returns ``{".md": …, ".json": …, "figures": folder}``."""
    out = Path(args.out)
    paths = {suffix: _writable(out.with_name(out.name + suffix), args.force) for suffix in (".md", ".json")}
    folder = Path(args.figures) if args.figures is not None else out.with_name(out.name + "_figures")
    existing = sorted(folder.glob(f"{figures}*")) if figures is not None and folder.is_dir() else []
    if existing and not args.force:
        raise SystemExit(f"error: {folder} already holds {len(existing)} figure file(s) named {figures}* (e.g. {existing[0].name}); "
                         "pass --force to overwrite them, or --figures to write elsewhere")
    for path in paths.values():
        path.unlink(missing_ok=True)
    return {**paths, "figures": folder}


def _write_study(args: argparse.Namespace, paths: dict[str, Path], study: BaseModel | dict | list[dict], markdown: str) -> None:
    import json

    write_text(paths[".md"], markdown)
    write_text(paths[".json"], json.dumps(study.model_dump() if isinstance(study, BaseModel) else study, indent=1))
    print(f"wrote {paths['.md']}, {paths['.json']} and figures in {paths['figures']}")


def cmd_compose(args: argparse.Namespace) -> None:
    from persona_interp.masks.composition import TYPE_LETTERS, type_poles
    from persona_interp.report.markdown import composition_markdown
    from persona_interp.studies.composition import run_composition

    try:
        type_poles(args.type)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    paths = _study_paths(args, f"type_{args.type.upper()}_{args.sparsity}")
    model = _model(args)
    axes = {axis: _signatures(args, model, axis) for axis in TYPE_LETTERS}
    study = run_composition(model, axes, type_code=args.type, sparsity=args.sparsity, axis=args.axis,
                            fractions=args.fractions, n_test=args.n_test, seed=args.seed, figures_dir=paths["figures"])
    _write_study(args, paths, study, composition_markdown(study))


def cmd_regimes(args: argparse.Namespace) -> None:
    from persona_interp.report.markdown import regimes_markdown
    from persona_interp.studies.regimes import run_regimes

    paths = _study_paths(args, f"regimes_{args.persona}")
    model = _model(args)
    signatures = _signatures(args, model, args.persona)
    study = run_regimes(model, args.persona, signatures, sparsity=args.sparsity, n_items=args.n_items,
                        n_texts=args.n_texts, n_calibration=args.n_calibration, n_validation=args.n_validation,
                        seed=args.seed, figures_dir=paths["figures"])
    _write_study(args, paths, study, regimes_markdown(study))


FIGURES_HELP = "figures folder (default: PREFIX_figures, beside the report)"


def _study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.json")
    p.add_argument("--figures", help=FIGURES_HELP)
    p.add_argument("--force", action="store_true")


def _model_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Which model and how it is placed; accepted before or after the subcommand."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default, help="model name or folder (default: embedded SmolLM2-135M-Instruct)")
    group.add_argument("--dtype", default=default, choices=DTYPE_NAMES,
                       help="the model's dtype (default: auto: bfloat16 on GPUs and on CPUs with AMX-BF16 or AVX512-BF16, where it "
                            "is 2-4x faster, float32 on CPUs without, where bf16 is far slower; every results file records the "
                            "dtype and CPU that ran)")
    group.add_argument("--device", default=default, help="put the whole model on this device, e.g. cuda or cuda:1")
    group.add_argument("--device-map", default=default,
                       help="'auto': shard the model over every visible GPU with accelerate (instead of --device)")


def _model(args: argparse.Namespace, dtype: str = "auto") -> Any:
    """The model the options name (``dtype``: the one ``--dtype`` leaves unset falls back to)."""
    from persona_interp.model.load import load_model

    return load_model(args.model, dtype=args.dtype or dtype, device=args.device, device_map=args.device_map)


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that states every option's default, also for options without a help text."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that shows its defaults and takes the model options too."""
    command = sub.add_parser(name, help=help, formatter_class=_ShowDefaults)
    _model_options(command, argparse.SUPPRESS)             # SUPPRESS: a value given before the subcommand stays
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona-interp", description="Persona subnetworks: signatures, masks, evaluation.")
    _model_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "collect", "collect activation signatures of one pole of a persona, or of neutral texts")
    p.add_argument("--persona", choices=persona_names())
    p.add_argument("--side", choices=list(SIDES))
    p.add_argument("--neutral", action="store_true", help="collect a neutral-text signature (for --neutral-signature of "
                   "build-mask) on the first --n (default 16) neutral texts damage-aware methods may fit on (those after "
                   "the main job's reported and selection texts)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=_positive_int, help="use a seeded sample of this many calibration items (from the fit part "
                   "of the training split, test questions dropped: the items the main job and analyse calibrate on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-scope", default="all", choices=TOKEN_SCOPES)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--max-tokens", type=_positive_int, default=256)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_collect)

    p = _command(sub, "build-mask", "build a mask (or an opposing pair) from what the method needs: signatures, a neutral "
                 "signature, calibration items, neutral texts")
    p.add_argument("--method", required=True, choices=method_names(),
                   help="a registered method (persona_interp.masks.registry); its options below apply where it takes them")
    p.add_argument("--seek")
    p.add_argument("--reject")
    p.add_argument("--sparsity", type=_sparsity, required=True)
    p.add_argument("--modules", nargs="+", help="attn, mlp, q … down, or map names")
    p.add_argument("--layers", type=_layers, help="e.g. 10-19 or 3,5,7")
    p.add_argument("--phi", default="relu", choices=PHIS)
    p.add_argument("--tau", type=float, default=1.0, help="softplus temperature (the paper code's option: 2)")
    p.add_argument("--rule", default="disjoint", choices=RULES,
                   help="contrastive_sparse: the paper text's disjoint rule or its code's sequential top-k")
    p.add_argument("--statistic", default="norm", choices=STATISTICS,
                   help="per-sample statistic: the paper's L2 norm, or the length-fair norm / sqrt(tokens)")
    p.add_argument("--seed", type=int, default=0, help="the random mask's, the calibration sample's and the gates' seed")
    p.add_argument("--neutral-signature", help="a neutral-text signature (collect --neutral), for the methods that need one")
    p.add_argument("--persona", choices=persona_names(), help="calibration items of this persona (the fit part of its "
                   "training split, as collect takes them), for the methods that need them")
    p.add_argument("--n-items", type=_positive_int, help="a seeded sample of this many calibration items (default: all)")
    p.add_argument("--n-neutral", type=_positive_int, help="this many neutral texts (those after the main job's reported "
                   "and selection texts), for the methods that fit on them")
    for name, kind, text in (("generic", float, "share of input channels by neutral importance removed last"),
                             ("utility", float, "set difference: each row's protected share by neutral utility"),
                             ("retain_eps", float, "retain_ratio: floor of the neutral score, relative to its mean"),
                             ("damage_eps", float, "gradient: floor of the damage, relative to its mean"),
                             ("steps", _positive_int, "learned_gates: training steps"),
                             ("lam", float, "learned_gates: weight of the neutral KL"),
                             ("beta", float, "learned_gates: weight of the removed gate mass"),
                             ("batch_size", _positive_int, "gradient methods and learned_gates: batch size")):
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default: the method's)")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX_<side>.safetensors")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_mask)

    p = _command(sub, "inspect", "describe a saved mask or signature")
    p.add_argument("path")
    p.set_defaults(func=cmd_inspect)

    p = _command(sub, "analyse", "where a persona sits: heatmaps, top heads/neurons, overlap, dose-response, circuitsvis")
    p.add_argument("--persona", required=True, choices=persona_names())
    p.add_argument("--quick", action="store_true", help="small samples (a few minutes)")
    p.add_argument("--sparsity", type=_sparsity)
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.json")
    p.add_argument("--figures", help=FIGURES_HELP + "; PNG, SVG, HTML")
    p.add_argument("--signatures", help="reuse PERSONA_{seek,reject}.safetensors from this folder (e.g. reports/signatures)")
    p.add_argument("--localise-only", action="store_true",
                   help="skip the causal ablations (dose-response, equal damage): under a minute, not an hour")
    p.add_argument("--kinds", nargs="+", choices=["neuron", "head"], help="units of the dose-response (default both)")
    p.add_argument("--modes", nargs="+", choices=["zero", "mean"], help="ablation modes (default both)")
    p.add_argument("--ks", nargs="+", type=_positive_int, help="numbers of top / random units to ablate (default 1 4 16 64)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds of the random-unit controls (default 0 1 2)")
    p.add_argument("--no-prompts", action="store_true", help="dose-response without the seek / reject system prompts (a third of the time)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_analyse)

    p = _command(sub, "overlap", "the overlap table like with like: %% of entries opposing masks differ in, per method variant, for every pair")
    p.add_argument("--signatures", required=True, help="folder of PERSONA_{seek,reject}.safetensors (the main job writes REPORT_DIR/signatures)")
    p.add_argument("--personas", nargs="+", choices=persona_names())
    p.add_argument("--sparsities", nargs="+", type=_sparsity, default=[0.3, 0.5])
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.json")
    p.add_argument("--figures", help=FIGURES_HELP)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_overlap)

    p = _command(sub, "evaluate", "score saved masks (and optionally the persona prompts) on a persona's test items")
    p.add_argument("--persona", required=True, choices=persona_names())
    p.add_argument("--masks", nargs="+", help="mask files (persona-interp build-mask writes them)")
    p.add_argument("--prompts", action="store_true", help="also the persona's default seek and reject system prompts")
    p.add_argument("--no-control", action="store_true", help="skip the random mask matched to the first mask")
    p.add_argument("--n-test", type=_positive_int, help="seeded sample of the test items (default: all)")
    p.add_argument("--n-neutral", type=_positive_int, default=24, help="neutral texts for perplexity and KL")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    _study_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = _command(sub, "figures", "render the accuracy and effect–damage frontier figures (and the report) again from a saved results.json")
    p.add_argument("--results", required=True, help="a results.json the main job wrote (e.g. results/quick/results.json)")
    p.add_argument("--out", help="figures folder (required unless --docs is given alone)")
    p.add_argument("--report", help="also write the report (markdown, its figures linked from --out) to this file")
    p.add_argument("--docs", nargs="+", metavar="PAGE", help="rewrite the generated blocks of these pages "
                   "(<!-- generated: NAME (COMMAND) --> … <!-- end generated -->, e.g. README.md docs/findings.md) from "
                   "--results and the study records in its folder (atlas/, composition.json, regimes/), nothing outside them")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_figures)

    p = _command(sub, "compose", "a full MBTI type from the four axes (composed mask vs intersection vs prompt) and a fractional persona curve")
    p.add_argument("--signatures", help="folder of AXIS_{seek,reject}.safetensors for the four MBTI axes (default: collect them)")
    p.add_argument("--n-calibration", type=_positive_int, default=64,
                   help="without --signatures: calibration items per axis the signatures are collected from")
    p.add_argument("--type", default="INTJ", help="four-letter MBTI type (default INTJ)")
    p.add_argument("--sparsity", type=_sparsity, default=0.3)
    p.add_argument("--axis", default="introversion_extraversion", choices=list(MBTI_AXES), help="axis of the fractional curve")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--n-test", type=_positive_int, help="seeded sample of each axis's test items (default: all)")
    _study_arguments(p)
    p.set_defaults(func=cmd_compose)

    p = _command(sub, "regimes", "prompt vs mask vs steering: residual shifts per layer, cosines, transfer of directions")
    p.add_argument("--persona", required=True, choices=persona_names())
    p.add_argument("--signatures", help="folder of PERSONA_{seek,reject}.safetensors (default: collect them)")
    p.add_argument("--sparsity", type=_sparsity, default=0.3)
    p.add_argument("--n-items", type=_positive_int, default=48, help="held-out A/B items for the behavioural effects")
    p.add_argument("--n-texts", type=_positive_int, default=16, help="neutral texts for the residual shifts")
    p.add_argument("--n-calibration", type=_positive_int, default=64,
                   help="calibration items for the steering vector (and, without --signatures, the signatures)")
    p.add_argument("--n-validation", type=_positive_int, default=16, help="validation items that pick the steering layer and multiplier")
    _study_arguments(p)
    p.set_defaults(func=cmd_regimes)

    p = _command(sub, "reproduce", "the main job: the whole pipeline, report and figures")
    p.add_argument("--quick", action="store_true", help="power persona only, small samples: a few minutes on 2 cores")
    p.add_argument("--personas", nargs="+", choices=persona_names())
    p.add_argument("--sparsities", nargs="+", type=_sparsity)
    p.add_argument("--n-test", type=_positive_int)
    p.add_argument("--n-calibration", type=_positive_int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--racing", type=_positive_int, metavar="N",
                   help="successive halving in the searches: score every candidate on the first N validation items and "
                        "only those that can still win a damage budget on the rest (default: all on all)")
    p.add_argument("--out", help="report folder (default results/quick with --quick, else reports)")
    p.add_argument("--figures", help="figures folder (default OUT/figures)")
    p.add_argument("--force", action="store_true", help="write into a non-empty output or figures folder")
    p.add_argument("--resume", action="store_true", help="keep the personas a previous run with the same settings finished, and the conditions a "
                        "cut-off persona had scored (out/checkpoints/)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="with --resume: keep them even when computed by another model, dtype, device or CPU kind "
                        "(refused otherwise; the report then names each persona's set-up)")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand; bad input (a missing or damaged file, a mask of another model, a wrong value) ends with
    one ``error: …`` line and exit status 1 (``PERSONA_INTERP_TRACEBACK=1`` shows the traceback instead)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (OSError, ValueError, KeyError) as error:           # DataError and ModelMismatchError are ValueErrors
        if os.environ.get("PERSONA_INTERP_TRACEBACK"):
            raise
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
