"""Pruning decoder language models from Hugging Face transformers (the ``edgeprune[llm]`` extra).

Block-by-block calibration; unstructured and N:M sparsity by magnitude, Wanda or SparseGPT;
FASP-style width pruning with least-squares restoration; perplexity workloads, on one held-out
text or per named slice of held-out text; the recipe that trains the example LMs; pruned models
saved as directories that ``AutoModelForCausalLM.from_pretrained`` loads. transformers is
imported only when a function here needs it.
"""

from edgeprune.llm import coreml_backend as _coreml_backend  # noqa: F401  (registers the Core ML decoder)
from edgeprune.llm import onnx_backend as _onnx_backend  # noqa: F401  (registers the ONNX decoder)
from edgeprune.llm.handler import CausalLMConfig  # registers the causal-LM pruner
from edgeprune.llm.logits import CausalLMLogits
from edgeprune.llm.prune import CRITERIA, METHODS, LLMPruneResult, prune_causal_lm
from edgeprune.llm.save import load_causal_lm, reload_max_abs_diff, save_pretrained
from edgeprune.llm.workload import causal_lm_workload, perplexity

__all__ = [
    "CRITERIA",
    "CausalLMConfig",
    "METHODS",
    "CausalLMLogits",
    "LLMPruneResult",
    "causal_lm_workload",
    "load_causal_lm",
    "perplexity",
    "prune_causal_lm",
    "reload_max_abs_diff",
    "save_pretrained",
]
