"""Graph -> Graph passes and the ordered pipeline that runs them."""

from .constant_fold import constant_fold
from .cse import cse
from .dce import dce
from .decompose import decompose
from .materialize_outputs import materialize_outputs
from .pipeline import PIPELINE, PipelineResult, run_pipeline
from .simplify import simplify

__all__ = ["constant_fold", "cse", "dce", "decompose", "materialize_outputs", "simplify",
           "PIPELINE", "PipelineResult", "run_pipeline"]
