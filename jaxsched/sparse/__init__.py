"""jaxsched.sparse: Viterbi-compressed sparse matrices (Lee et al., ICLR 2018)."""

from jaxsched.sparse._checkpoint import prune_checkpoint as prune_checkpoint
from jaxsched.sparse._decompressor import MAX_NUM_FF as MAX_NUM_FF
from jaxsched.sparse._decompressor import Comparator as Comparator
from jaxsched.sparse._decompressor import ViterbiDecompressor as ViterbiDecompressor
from jaxsched.sparse._format import ViterbiSparseMatrix as ViterbiSparseMatrix
from jaxsched.sparse._format import index_cost_report as index_cost_report
from jaxsched.sparse._prune import BiasedMetric as BiasedMetric
from jaxsched.sparse._prune import TanhMargin as TanhMargin
from jaxsched.sparse._prune import mask_score as mask_score
from jaxsched.sparse._prune import viterbi_prune as viterbi_prune
from jaxsched.sparse.viterbi_matmul import ViterbiMatmulConfig as ViterbiMatmulConfig
from jaxsched.sparse.viterbi_matmul import viterbi_matmul as viterbi_matmul
from jaxsched.sparse.viterbi_matmul import viterbi_matmul_reference as viterbi_matmul_reference

__all__ = [
  "MAX_NUM_FF",
  "BiasedMetric",
  "Comparator",
  "TanhMargin",
  "ViterbiDecompressor",
  "ViterbiMatmulConfig",
  "ViterbiSparseMatrix",
  "index_cost_report",
  "mask_score",
  "prune_checkpoint",
  "viterbi_matmul",
  "viterbi_matmul_reference",
  "viterbi_prune",
]
