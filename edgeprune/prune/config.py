"""The pruning methods' configs: one small frozen dataclass per method, validated on creation.

Every validation error is an InputError with one line a CLI can print as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeprune.errors import InputError
from edgeprune.vocabulary import STRATEGIES

if TYPE_CHECKING:
    from edgeprune.profile import Profile

STRUCTURED_CRITERIA = ("l2", "l1", "bn_scale", "taylor", "wanda")
WEIGHT_CRITERIA = ("magnitude", "wanda")
# criteria that read calibration activations or gradients
CALIBRATED_CRITERIA = frozenset({"taylor", "wanda"})


def _check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity must be a number in [0, 1), got {sparsity!r}")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class StructuredConfig:
    """Remove whole channels, neurons and attention heads (a smaller dense model).

    sparsity: fraction of the prunable channels (heads count as their channels) to remove.
    criterion: channel score: ``l2``/``l1`` weight magnitude, ``bn_scale`` (|gamma| of the
        BatchNorm after the channel), ``taylor`` (|w * dL/dw| on calibration data) or
        ``wanda`` (|W_ij| * ||X_j|| summed over the consumers' columns).
    allocation: ``uniform`` removes the same fraction from every group of coupled layers;
        ``global`` ranks all channels together, no group losing more than max_layer_sparsity.
    channel_multiple: kept channel counts are rounded to a multiple of this (hardware lanes).
    protect_first_last: keep the output widths of the layers that read the model's inputs and
        of the layers that write its outputs.
    ignore: qualified module names whose output channels must not be pruned.
    """

    sparsity: float
    criterion: str = "l2"
    allocation: str = "uniform"
    max_layer_sparsity: float = 0.8
    channel_multiple: int = 1
    protect_first_last: bool = True
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)
        _check_choice("structured criterion", self.criterion, STRUCTURED_CRITERIA)
        _check_choice("allocation", self.allocation, ("uniform", "global"))
        if not 0.0 < self.max_layer_sparsity < 1.0:
            raise InputError(f"max_layer_sparsity must be in (0, 1), got {self.max_layer_sparsity!r}")
        if self.allocation == "uniform" and self.sparsity > self.max_layer_sparsity:
            raise InputError(
                f"sparsity {self.sparsity} exceeds max_layer_sparsity {self.max_layer_sparsity}: "
                "raise the cap or lower the sparsity"
            )
        if int(self.channel_multiple) != self.channel_multiple or self.channel_multiple < 1:
            raise InputError(f"channel_multiple must be a positive integer, got {self.channel_multiple!r}")
        object.__setattr__(self, "channel_multiple", int(self.channel_multiple))
        if isinstance(self.ignore, str) or not all(isinstance(n, str) for n in self.ignore):
            raise InputError(f"ignore must be a list of module names, got {self.ignore!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))


@dataclass(frozen=True)
class UnstructuredConfig:
    """Zero individual weights of convolutions and linears.

    criterion: ``magnitude`` (|W|) or ``wanda`` (|W_ij| * ||X_j||, compared within each output
        row, as in the Wanda paper; needs calibration data).
    scope: ``layer`` gives every layer the same sparsity; ``global`` uses one magnitude
        threshold across all layers (only with ``magnitude``).
    include_embeddings / include_classifier: embeddings and the output layer stay dense unless set.
    """

    sparsity: float
    criterion: str = "magnitude"
    scope: str = "layer"
    include_embeddings: bool = False
    include_classifier: bool = False

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)
        _check_choice("unstructured criterion", self.criterion, WEIGHT_CRITERIA)
        _check_choice("scope", self.scope, ("layer", "global"))
        if self.criterion == "wanda" and self.scope == "global":
            raise InputError("wanda compares scores within each output row; use scope 'layer'")


@dataclass(frozen=True)
class NMConfig:
    """Keep the N highest-scoring weights in every block of M consecutive inputs (2:4 by default).

    min_channels: layers whose input or output width is below this stay dense (the profile's
        ``sparsity.nm.min_channels``: sparse kernels do not pay off on small layers).
    """

    n: int = 2
    m: int = 4
    criterion: str = "magnitude"
    min_channels: int = 0
    include_classifier: bool = False

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m)):
            raise InputError(f"N:M needs integers, got {self.n!r}:{self.m!r}")
        if not 0 < self.n < self.m:
            raise InputError(f"N:M sparsity needs 0 < N < M, got {self.n}:{self.m}")
        _check_choice("N:M criterion", self.criterion, WEIGHT_CRITERIA)
        if self.min_channels < 0:
            raise InputError(f"min_channels must be >= 0, got {self.min_channels}")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class HybridConfig:
    """Structured pruning of convolutions and MLP blocks, unstructured zeros in embeddings and
    attention projections (the split recommended for transformers), at the same sparsity.

    criterion: the structured channel score; ``unstructured_criterion`` scores the weights.
    """

    sparsity: float
    criterion: str = "l2"
    unstructured_criterion: str = "magnitude"
    allocation: str = "uniform"
    max_layer_sparsity: float = 0.8
    channel_multiple: int = 1
    protect_first_last: bool = True

    def __post_init__(self) -> None:
        # the two halves validate their own fields
        self.structured()
        self.unstructured()

    def structured(self) -> StructuredConfig:
        return StructuredConfig(
            self.sparsity, self.criterion, self.allocation, self.max_layer_sparsity,
            self.channel_multiple, self.protect_first_last,
        )

    def unstructured(self) -> UnstructuredConfig:
        return UnstructuredConfig(self.sparsity, self.unstructured_criterion, "layer", include_embeddings=True)


def parse_nm(text: str) -> tuple[int, int]:
    """Returns (N, M) from text like ``2:4``; InputError unless 0 < N < M."""
    n, sep, m = str(text).partition(":")
    if not (sep and n.strip().isdigit() and m.strip().isdigit()):
        raise InputError(f"--nm must look like N:M (e.g. 2:4), got {text!r}")
    n_i, m_i = int(n), int(m)
    if not 0 < n_i < m_i:
        raise InputError(f"--nm {text}: N:M sparsity needs 0 < N < M")
    return n_i, m_i


# the general engines' configs; a method of its own (edgeprune.llm's causal-LM pruner) registers its config too
PruneConfig = StructuredConfig | UnstructuredConfig | NMConfig | HybridConfig


def config_for(strategy: str, sparsity: float | None = None, criterion: str | None = None,
               nm: str | None = None, profile: Profile | None = None) -> PruneConfig | None:
    """Returns the config for build options (None for strategy ``none``).

    The profile supplies the channel multiple (structured, hybrid) and the smallest layer
    width worth N:M sparsity. ``sparsity`` is required except for ``nm``, where N:M fixes it;
    ``criterion`` None picks the method's default. Criteria that need calibration data are
    checked against the workload in ``prune``.
    """
    _check_choice("--strategy", strategy, STRATEGIES)
    if nm is not None and strategy != "nm":
        raise InputError(f"--nm applies only to --strategy nm, not {strategy}")
    if strategy == "none":
        if sparsity:
            raise InputError("--sparsity needs a pruning --strategy (structured, unstructured, nm or hybrid)")
        return None
    multiple = int(profile.channel_multiple.value) if profile is not None else 1
    if strategy == "nm":
        n, m = parse_nm(nm) if nm is not None else (2, 4)
        nm_support = getattr(getattr(profile, "sparsity", None), "nm", None)
        config = NMConfig(n, m, criterion or "magnitude",
                          min_channels=nm_support.min_channels if nm_support is not None else 0)
        if sparsity is not None and abs(sparsity - config.sparsity) > 1e-9:
            raise InputError(
                f"--strategy nm with --nm {config.pattern} fixes sparsity at {config.sparsity:.2f}; "
                f"drop --sparsity {sparsity} or change --nm"
            )
        return config
    if sparsity is None:
        raise InputError(f"--strategy {strategy} needs --sparsity (a fraction in [0, 1))")
    if strategy == "structured":
        return StructuredConfig(sparsity, criterion or "l2", channel_multiple=multiple)
    if strategy == "unstructured":
        _check_choice("--criterion for unstructured", criterion or "magnitude", ("magnitude", "global_magnitude", "wanda"))
        if criterion == "global_magnitude":
            return UnstructuredConfig(sparsity, "magnitude", scope="global")
        return UnstructuredConfig(sparsity, criterion or "magnitude")
    unstructured_criterion = "wanda" if criterion == "wanda" else "magnitude"
    return HybridConfig(sparsity, criterion or "l2", unstructured_criterion, channel_multiple=multiple)
