"""persona_interp: find, measure and causally test persona subnetworks in language models.

Example:
    >>> import persona_interp as pi
    >>> model = pi.load_model()                                   # embedded SmolLM2-135M-Instruct
    >>> data = pi.load_persona("power")
    >>> seek = pi.collect_signatures(model, data, side="seek")
    >>> reject = pi.collect_signatures(model, data, side="reject")
    >>> seek_mask, reject_mask = pi.contrastive_wanda_masks(model, seek, reject, sparsity=0.3)
    >>> with pi.ablate(model, seek_mask):
    ...     ...
"""
from .ablation import HeadMask, NeuronMask, ablate
from .adapter import LinearMap, ModelAdapter, get_adapter
from .data import (DataError, PersonaDataset, PersonaItem, load_csv, load_dataset, load_jsonl, load_neutral_texts,
                   load_persona, persona_names)
from .masks import (Mask, contrastive_sparse_masks, contrastive_wanda_masks, fraction_differ, iou, magnitude_mask,
                    random_mask, wanda_mask)
from .composition import compose, fractional_mask, type_mask
from .generation import generate
from .regimes import compare_regimes
from .models import load_model
from .adapter import ModelMismatchError
from .signatures import Signature, collect_signatures

__all__ = [
    "HeadMask", "NeuronMask", "ablate", "LinearMap", "ModelAdapter", "get_adapter", "DataError", "PersonaDataset",
    "PersonaItem", "load_csv", "load_dataset", "load_jsonl", "load_neutral_texts", "load_persona", "persona_names",
    "Mask", "contrastive_sparse_masks", "contrastive_wanda_masks", "fraction_differ", "iou", "magnitude_mask",
    "random_mask", "wanda_mask", "compose", "fractional_mask", "type_mask", "compare_regimes", "generate", "load_model",
    "ModelMismatchError", "Signature", "collect_signatures",
]
