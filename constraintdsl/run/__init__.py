"""Plan → nnsight traces: the runner (generate, trace, apply, install; local or NDIF), concept readouts
of generated text (:mod:`.readout`), and the Python API (:mod:`.api`: ``compile``, ``BoundPlan``)."""
