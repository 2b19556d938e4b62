"""Independent references for the named hook points: plain PyTorch hooks on the Hugging Face
modules (paths written here from transformers' own classes, not read from mech's adapters),
positions from ``input_ids`` alone, and the logit lens by hand."""

from __future__ import annotations

import torch

from reference import hooks, image_positions

# name -> (submodule of a decoder layer, how its value is read): "arg" the first positional
# input, "out" the output, "out0" the first element of a tuple output.
MODULES = {
    "resid_pre": ("", "arg"),
    "ln1": ("input_layernorm", "out"),
    "attn.z": ("self_attn.o_proj", "arg"),
    "attn_out": ("self_attn", "out0"),
    "mlp_out": ("mlp", "out"),
    "resid_post": ("", "out"),
}
# Gemma 3 adds post-norms: what joins the residual stream is their output.
GEMMA3 = {"attn_out": ("post_attention_layernorm", "out"), "mlp_out": ("post_feedforward_layernorm", "out")}
NAMES = tuple(MODULES)


def decoder_layers(module):
    return module.model.language_model.layers


def where(module, name, layer):
    table = {**MODULES, **(GEMMA3 if type(module).__name__.startswith("Gemma3") else {})}
    path, how = table[name]
    target = decoder_layers(module)[layer]
    return (target.get_submodule(path) if path else target), how


def hook(module, name, layer, fn, seq_len):
    """Register ``fn(value) -> None | new value`` on hook point ``name`` of ``layer``, acting
    on the prefill only (the forward whose sequence is the prompt)."""
    target, how = where(module, name, layer)
    if how == "arg":
        def pre(mod, args):
            if args[0].shape[1] != seq_len:
                return None
            new = fn(args[0])
            return None if new is None else (new, *args[1:])
        return target.register_forward_pre_hook(pre)

    def post(mod, args, output):
        value = output[0] if how == "out0" else output
        if value.shape[1] != seq_len:
            return None
        new = fn(value)
        if new is None:
            return None
        return (new, *output[1:]) if how == "out0" else new
    return target.register_forward_hook(post)


def record(module, batch, names=NAMES, layers=None):
    """``({(name, layer): [batch, seq, ...]}, logits, image embeddings [batch, seq, hidden])`` of
    one plain forward: every hook point at every layer, full length."""
    layers = range(len(decoder_layers(module))) if layers is None else layers
    found = {}
    handles = []
    for name in names:
        for layer in layers:
            def keep(value, key=(name, layer)):
                found[key] = value.detach().clone()
            handles.append(hook(module, name, layer, keep, batch.seq_len))

    def embeds(mod, args):
        found["embeds"] = args[0].detach().clone()
    handles.append(decoder_layers(module)[0].register_forward_pre_hook(embeds))
    with hooks(*handles), torch.no_grad():
        logits = module(**batch.inputs).logits
    return found, logits


def positions(batch, image_token_id, which) -> list[list[int]]:
    """Each row's sequence positions for ``which`` ("image", "last", "text" or a list of
    indices into the row's own tokens), in sequence order, from input_ids and the attention
    mask alone."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    seq = ids.shape[1]
    out = []
    for b, image in enumerate(image_positions(ids, image_token_id)):
        real = [p for p in range(seq) if mask[b, p]]
        if which == "image":
            out.append(image.tolist())
        elif which == "last":
            out.append([seq - 1])
        elif which == "text":
            out.append([p for p in real if p > int(image.max())])
        else:
            out.append(sorted(real[i] for i in which))  # in sequence order, as documented
    return out


def two_pass_patch(module, target, source, name, layers, target_positions, source_positions, *, new_tokens=0,
                   also=()):
    """Activation patching by hand: run ``source`` with hooks keeping ``name`` at ``layers``,
    then ``target`` with hooks writing those values over the target's at the paired
    positions (row i, j-th position from the j-th). ``also``: more hooks for the second pass.
    Returns the target's logits, and its generated ids when ``new_tokens``."""
    kept, _ = record(module, source, names=(name,), layers=layers)
    handles = list(also)
    for layer in layers:
        def replace(value, layer=layer):
            value = value.clone()
            for b, (tp, sp) in enumerate(zip(target_positions, source_positions)):
                value[b, tp] = kept[(name, layer)][b, sp]
            return value
        handles.append(hook(module, name, layer, replace, target.seq_len))
    with hooks(*handles), torch.no_grad():
        logits = module(**target.inputs).logits
        ids = None if not new_tokens else module.generate(**target.generate_inputs, max_new_tokens=new_tokens,
                                                          do_sample=False, pad_token_id=0)
    return logits, ids


def lens(module, hidden):
    """The logit lens by hand: the decoder's final norm, then the output projection."""
    with torch.no_grad():
        return module.lm_head(module.model.language_model.norm(hidden)).float()
