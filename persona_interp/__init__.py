"""persona_interp: find, measure and causally test persona subnetworks in language models.

Example (``model = pi.load_model()`` is the embedded SmolLM2-135M-Instruct; here a tiny random model):
    >>> import persona_interp as pi
    >>> data = pi.load_persona("power")[:16]
    >>> seek = pi.collect_signatures(model, data, side="seek", progress=False)
    >>> reject = pi.collect_signatures(model, data, side="reject", progress=False)
    >>> seek_mask, reject_mask = pi.contrastive_wanda_masks(model, seek, reject, sparsity=0.3)
    >>> with pi.ablate(model, seek_mask):
    ...     scores = pi.score_ab(model, pi.load_persona("power", "test")[:4], progress=False)
"""
from persona_interp.analysis.regimes import compare_regimes
from persona_interp.data.personas import (
                                          DataError,
                                          PersonaDataset,
                                          PersonaItem,
                                          load_csv,
                                          load_dataset,
                                          load_jsonl,
                                          load_neutral_texts,
                                          load_persona,
                                          persona_names,
)
from persona_interp.data.retrieval import Retriever
from persona_interp.evaluation.evaluate import Evaluation, control_comparison, evaluate
from persona_interp.evaluation.scoring import DamageReference, perplexity, score_ab
from persona_interp.evaluation.stats import paired_difference
from persona_interp.interventions.ablation import HeadMask, NeuronMask, ablate
from persona_interp.interventions.conditions import (
    Composed, Condition, LoRACondition, MaskCondition, Prompt, SteeringCondition, WeightEditCondition, paired,
)
from persona_interp.interventions.lora import LoRA, LoRAConfig, train_lora
from persona_interp.interventions.ode_steering import ODESteering, ode_steerings
from persona_interp.interventions.steering import SteeringVector, mean_difference_vectors, pca_vectors
from persona_interp.interventions.weight_edit import DirectionalEdit
from persona_interp.masks.builders import contrastive_sparse_masks, contrastive_wanda_masks, magnitude_mask, random_mask, wanda_mask
from persona_interp.masks.composition import compose, fractional_mask, type_mask
from persona_interp.masks.mask import Mask, fraction_differ, fraction_differ_by, iou, iou_by
from persona_interp.masks.registry import MethodInputs, MethodSpec, method_names, method_spec, register
from persona_interp.model.adapter import ModelMismatchError, get_adapter
from persona_interp.model.generation import generate
from persona_interp.model.load import load_model
from persona_interp.report.markdown import markdown_table
from persona_interp.report.results import Provenance, RunResults, load_results
from persona_interp.signatures import Signature, collect_signatures

__all__ = [
    # model and data
    "load_model", "get_adapter", "generate", "ModelMismatchError", "load_persona", "persona_names", "load_dataset",
    "load_csv", "load_jsonl", "load_neutral_texts", "PersonaDataset", "PersonaItem", "DataError", "Retriever",
    # signatures and masks
    "Signature", "collect_signatures", "Mask", "wanda_mask", "contrastive_wanda_masks", "contrastive_sparse_masks",
    "random_mask", "magnitude_mask", "fraction_differ", "fraction_differ_by", "iou", "iou_by", "compose", "fractional_mask", "type_mask",
    "MethodSpec", "MethodInputs", "register", "method_spec", "method_names",
    # interventions (each applied inside a ``with``)
    "ablate", "NeuronMask", "HeadMask", "SteeringVector", "mean_difference_vectors", "pca_vectors", "ODESteering",
    "ode_steerings", "LoRA", "LoRAConfig", "train_lora", "DirectionalEdit",
    # conditions, evaluation, statistics
    "Condition", "Prompt", "MaskCondition", "SteeringCondition", "WeightEditCondition", "LoRACondition", "Composed", "paired",
    "evaluate", "Evaluation", "control_comparison", "score_ab", "DamageReference", "perplexity", "paired_difference",
    "markdown_table", "compare_regimes",
    # the main job's results
    "load_results", "RunResults", "Provenance",
]
