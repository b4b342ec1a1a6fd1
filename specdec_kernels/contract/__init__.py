"""The contract floor: what every implementation of an op agrees on, and nothing else.

Per op family (chain, sampling, gumbel, tree, entropy, losses, attention, kv_cache): the tree format
and other input conventions, every argument check with its error message, the normalisation of
user arguments to the op's canonical arguments (the C++ schema's, csrc/registration.cpp), the
value checks of ``check=True``, the fake (output shapes) for torch.compile, and the draw plan
(which Philox slots a call uses and its offset stride). limits.py holds the constants the C++/CUDA
kernels share (setup.py passes them as macros). This floor imports only torch and itself: the
implementations (reference/, triton/, csrc/) and the public ops (ops/) build on it.
"""
