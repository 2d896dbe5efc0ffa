"""Runs one serialized nnsight request the way an NDIF server would, in a process that cannot import
constraintdsl.  Used by tests/test_remote_offline.py; not a test module itself.

Run as ``python -I -S isolated_child.py SITE_PATHS_JSON BLOB MODEL_DIR OUT``: ``-I -S`` drop the working
directory, PYTHONPATH and every ``.pth`` file (the editable install of this package is one), and only the
given site-packages folders are put back.  Exit status 3 means constraintdsl was importable after all.
"""

import json
import os
import sys


def main() -> int:
    """Deserialize the request against a model loaded from MODEL_DIR, run it, save what it saved."""
    paths, blob_path, model_dir, out_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    sys.path.extend(paths)
    # (site-packages may hold an empty ``constraintdsl/`` data folder; the code is what must be absent)
    if any(os.path.exists(os.path.join(p, "constraintdsl", "runtime.py")) for p in sys.path):
        print("constraintdsl's code is importable in the isolated process", file=sys.stderr)
        return 3

    import torch
    from nnsight import TransformersModel
    from nnsight.schema.request import RequestModel
    from nnsight.tracing.tracer import _saves, dec, inc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = TransformersModel(hf, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    with open(blob_path, "rb") as f:
        blob = f.read()
    tracer = RequestModel.deserialize(blob, model._remoteable_persistent_objects(), compress=False)
    inc()
    try:
        with torch.no_grad():
            tracer.execute(tracer.info.code)
        saved = {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in _saves()}
    finally:
        dec()
    leaked = sorted(name for name in sys.modules if name.split(".")[0] == "constraintdsl")
    torch.save({"saved": saved, "leaked": leaked}, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
