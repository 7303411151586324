"""Graph -> Graph passes and the ordered pipeline that runs them."""

from .dce import dce
from .decompose import decompose
from .pipeline import PIPELINE, PipelineResult, run_pipeline

__all__ = ["dce", "decompose", "PIPELINE", "PipelineResult", "run_pipeline"]
