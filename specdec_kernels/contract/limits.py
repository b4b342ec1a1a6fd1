"""Constants shared by the Python contract and the C++/CUDA kernels: the one place they are stated.

This module imports nothing, so setup.py reads it (``runpy.run_path``) and hands each value to the
compiler as a macro (``-DSPECDEC_<NAME>=<value>``); the kernels refuse to compile without them.
"""

#: Largest k (gumbel_topk) / width (stochastic_beam_step) the CUDA kernels keep per row: one block
#: holds the k best candidates of each vocabulary chunk in shared memory. Triton has no such limit.
CUDA_MAX_K = 256

#: check=True: a probability row must have |sum(row) - 1| <= this tolerance (summed in float32 or
#: wider), by the dtype of the rows. Half-precision rows get more room: a bf16-rounded softmax over
#: 128k ids can be off by a few tenths of a percent, since its largest probabilities are rounded
#: with a spacing of 2^-8.
PROB_SUM_TOL = 1e-3  # float32 (and float64) rows
PROB_SUM_TOL_HALF = 1e-2  # float16 and bfloat16 rows
