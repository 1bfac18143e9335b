#!/usr/bin/python3
"""Writes a GPT-2 GGUF (float32, random weights) of an eellm model spec's shape,
the llama.cpp peer of bench/decode, with the gguf writer of llama.cpp's source
tree (gguf-py).

Usage: gguf_gpt2.py GGUF_PY_DIR SPEC.txtpb OUT.gguf [--bf16-head]
--bf16-head: the tied head (token_embd.weight) in bf16, the rest float32, as
eellm's --bf16-heads reads it. The spec must be GPT-2-like (layernorm, GELU, learned positions, biases, tied
head); its exits are left out (decoding runs at full depth). No tokenizer: the
vocabulary is vocab_size dummy tokens (llama.cpp's "none" tokenizer model),
which is all llama-batched-bench needs.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train_step import load_text_spec  # noqa: E402


def main():
    gguf_py, spec_path, out = sys.argv[1:4]
    bf16_head = sys.argv[4:] == ["--bf16-head"]
    sys.path.insert(0, gguf_py)
    import gguf

    spec, pb = load_text_spec(spec_path)
    if (spec.norm, spec.activation, spec.positions) != (pb.Model.LAYERNORM, pb.Model.GELU,
                                                        pb.Model.LEARNED) or not spec.bias:
        sys.exit(f"gguf_gpt2.py: {spec_path} is not GPT-2-like")
    d, f, v = spec.d_model, spec.ffn_size or 4 * spec.d_model, spec.vocab_size
    rng = np.random.default_rng(0)

    def normal(*shape):  # numpy [rows, cols] is ggml's {cols, rows}
        return rng.normal(0, 0.02, shape).astype(np.float32)

    w = gguf.GGUFWriter(out, "gpt2")
    w.add_block_count(spec.n_layers)
    w.add_context_length(spec.context_length)
    w.add_embedding_length(d)
    w.add_feed_forward_length(f)
    w.add_head_count(spec.n_heads)
    w.add_layer_norm_eps(spec.norm_eps or 1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(v)
    w.add_tokenizer_model("none")
    if bf16_head:
        head = gguf.quants.quantize(normal(v, d), gguf.GGMLQuantizationType.BF16)
        w.add_tensor("token_embd.weight", head, raw_dtype=gguf.GGMLQuantizationType.BF16)
    else:
        w.add_tensor("token_embd.weight", normal(v, d))
    w.add_tensor("position_embd.weight", normal(spec.context_length, d))
    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    for i in range(spec.n_layers):
        blk = f"blk.{i}."
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(blk + norm + ".weight", ones)
            w.add_tensor(blk + norm + ".bias", zeros)
        w.add_tensor(blk + "attn_qkv.weight", normal(3 * d, d))
        w.add_tensor(blk + "attn_qkv.bias", np.zeros(3 * d, np.float32))
        w.add_tensor(blk + "attn_output.weight", normal(d, d))
        w.add_tensor(blk + "attn_output.bias", zeros)
        w.add_tensor(blk + "ffn_up.weight", normal(f, d))
        w.add_tensor(blk + "ffn_up.bias", np.zeros(f, np.float32))
        w.add_tensor(blk + "ffn_down.weight", normal(d, f))
        w.add_tensor(blk + "ffn_down.bias", zeros)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output_norm.bias", zeros)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
