"""Text → Spec: the grammar, parser, YAML twin, validation, includes, variants, canonical forms and diff.

Imports no torch.  The flow inside: :mod:`.nodes` (statement values) → :mod:`.canonical` (canonical text,
hash) → :mod:`.diff` → :mod:`.spec` (the Spec) → :mod:`.parser` (DSL lines) → :mod:`.validate` →
:mod:`.yaml_twin` → :mod:`.loading` (files, includes) → :mod:`.variants` (lets).
"""
