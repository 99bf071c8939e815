"""Every study's configuration and its quick / full presets, apart from the runners."""
from __future__ import annotations

from dataclasses import dataclass, field

from persona_interp.data.personas import AI_PERSONAS, MBTI_AXES
from persona_interp.evaluation.controls import MatchedControlConfig
from persona_interp.evaluation.search import Racing
from persona_interp.evaluation.tuning import MaskSpace
from persona_interp.interventions.lora import LoRAConfig
from persona_interp.masks.damage_aware import DAMAGE_AWARE_METHODS
from persona_interp.model.chat import TokenScope


@dataclass
class AtlasConfig:
    """Sizes of one atlas run; the defaults are the full run, tests use tiny values."""

    sparsity: float = 0.3
    n_calibration: int | None = 256
    validation_fraction: float = 0.2
    n_causal: int = 48
    ks: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    modes: list[str] = field(default_factory=lambda: ["zero", "mean"])
    kinds: list[str] = field(default_factory=lambda: ["neuron", "head"])
    prompts: bool = True                      # also measure the curves under the seek and reject system prompts
    n_neutral: int = 16
    n_top: int = 10
    steering_layer: float = 0.5
    batch_size: int = 8
    seed: int = 0
    causal: bool = True


QUICK_ATLAS = AtlasConfig(n_calibration=32, n_causal=16, ks=[1, 8, 64], seeds=[0, 1], n_neutral=6)


@dataclass
class ReproduceConfig:
    """What the main job runs. Calibration items are split (seeded) into fit and validation parts;
    signatures use the fit part only, test items are only ever scored."""

    personas: list[str] = field(default_factory=lambda: [*AI_PERSONAS, *MBTI_AXES])
    sparsities: list[float] = field(default_factory=lambda: [0.3])     # the paper's rows (contra.py's default rho)
    n_calibration: int | None = None
    n_test: int | None = None
    validation_fraction: float = 0.2
    seed: int = 0
    token_scope: TokenScope = "all"
    batch_size: int = 8
    max_tokens: int = 256
    n_neutral: int = 24              # neutral texts of the reported damage
    n_selection_neutral: int = 8     # the next neutral texts: the damage every search sees (never the reported ones)
    n_fit_neutral: int = 16          # the next: what damage-aware methods fit on (retain terms, KL penalties, the
                                     # neutral signature), never a selection or reported text
    stability_draws: int = 3
    diagnostics: bool = True         # overlap table, both statistics, stability (about 15 rankings of every weight)
    modules: list[str] | None = None
    rag_k: int = 3
    steering_layers: list[float] = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.65])   # fractions of depth
    steering_multipliers: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    n_validation: int | None = 24
    ode_features: int | None = 256
    # weight-edit steering (interventions/weight_edit.py) along each layer's mean-difference direction: its α, searched
    # like the multipliers (±α: amplify / attenuate, 1 projects it out of every o/down map; which pole each serves
    # is chosen on validation); None: off
    weight_edit_strengths: list[float] | None = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    # a random control matched on damage (selection texts) beside each same-sparsity one, for these methods' masks
    matched_controls: MatchedControlConfig | None = field(default_factory=MatchedControlConfig)
    # the same validation split tunes every regime: masks (per method), prompt phrasing, LoRA epochs
    # (sparsities from 0.001: at 0.01 per row the damage-aware masks already cost KL 0.09-5 on power's selection
    # texts, so a coarser grid leaves them no candidate within the smaller budgets, run of 3e0a9d1; 0.002 and 0.005:
    # between 0.003 and 0.01 learned gates went from KL 0.04 to 0.31 and retain-ratio from 0.03 to 0.10, run of
    # 38d09cc; 0.001 is one weight per row of a 576-wide map, the least a per-row mask removes, and there SNIP and the
    # gradient score already cost KL 0.10-0.11, so both also vary the maps (MLP only, late layers), like
    # Contrastive-Wanda; reports/rerun_38d09cc)
    mask_search: MaskSpace | None = field(default_factory=lambda: MaskSpace(
        sparsities=[0.001, 0.002, 0.003, 0.005, 0.01, 0.03, 0.1, 0.3, 0.5], modules=[None, "mlp"],
        layer_ranges=["all", "late"], token_scopes=["all", "answer"], statistics=["norm", "rms"], phis=["relu", "softplus"],
        design="one_at_a_time", vary=["contrastive_wanda", "snip_set_difference", "gradient"]))
    n_other_texts: int = 32          # other personas' questions and answers: a second damage measure nothing optimises
    # the registered methods beyond the signature-only ones that the mask search runs (the paper's rows never do)
    damage_aware_methods: list[str] = field(default_factory=lambda: list(DAMAGE_AWARE_METHODS))
    prompt_search: bool = True
    lora: LoRAConfig | None = field(default_factory=lambda: LoRAConfig(epochs=3))
    damage_budgets: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.5])   # KL (nats/token): each regime's picks
    # successive halving of every search's validation scoring (steering, weight edit, LoRA, masks): candidates that
    # cannot win a budget after racing.first items are not scored on the rest; None: every candidate on every item
    racing: Racing | None = None
    dtype: str = "auto"              # bfloat16 where the CPU (AMX/AVX512-BF16) or GPU is fast in it, else float32;
                                     # resolved once per run, the resolved dtype is in results.json's provenance


QUICK = ReproduceConfig(personas=["power"], sparsities=[0.3], n_calibration=24, n_test=16, n_neutral=4,
                        n_selection_neutral=4, n_fit_neutral=4, n_other_texts=8, damage_aware_methods=["retain_ratio"], stability_draws=2, rag_k=2,
                        steering_layers=[0.5], steering_multipliers=[4.0], n_validation=6, damage_budgets=[0.1, 0.5],
                        mask_search=MaskSpace(sparsities=[0.03, 0.3], modules=[None], layer_ranges=["all"],
                                              token_scopes=["all"], statistics=["norm", "rms"], design="one_at_a_time",
                                              vary=["contrastive_wanda"]),
                        lora=LoRAConfig(epochs=1), weight_edit_strengths=[1.0],
                        matched_controls=MatchedControlConfig(methods=["contrastive_wanda"], max_iter=6))
FULL = ReproduceConfig(n_calibration=128, n_test=100)   # 2 cores: see docs/performance.md for the measured times
