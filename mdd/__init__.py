"""mdd: dataset distillation via minimax diffusion, an experiment platform."""

from mdd.allocator import tune_allocator

# Before any tensor is allocated: keep freed blocks in the process (mdd/allocator.py).
tune_allocator()
