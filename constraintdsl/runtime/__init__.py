"""The torch-only code that touches activations and travels to NDIF by value (``nnsight.register``):
interventions (:mod:`.interventions`), extraction reductions (:mod:`.extraction`) and scoring sums
(:mod:`.scoring`).  Each module imports only torch and the standard library, and nothing of this package."""
