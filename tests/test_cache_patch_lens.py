"""Cache, Patch and LogitLens on every family against independent references (plain PyTorch
hooks on the Hugging Face modules, a two-pass patch by hand, the final norm and lm_head by
hand, transformers' own eager attention weights), in trace, generate and remote="local", on
left-padded batches whose rows hold different image-token counts where the family allows."""

import pytest
import torch

import mech
from hook_reference import NAMES, decoder_layers, lens, positions, record, two_pass_patch
from reference import hooks, multiplier, scale_hook
from tiny_models import QUESTIONS, random_images

TOL = 1e-5
NEW = 3


@pytest.fixture(scope="module")
def reference(model, batch):
    found, logits = record(model.nn._module, batch)
    return found, logits


@pytest.fixture(scope="module")
def source(model, batch):
    """Other images of the same sizes (so each row pair holds as many image tokens) and the
    questions in another order (so the two batches are padded differently)."""
    from conftest import SIZES

    return model.prepare(questions=QUESTIONS[1:] + QUESTIONS[:1], images=random_images(3, seed=11, sizes=SIZES))


def at(values, rows):
    """[batch, seq, ...] -> list per row of [n_b, ...] at the rows' positions."""
    return [values[b, p] for b, p in enumerate(rows)]


def close(got, want, tol=TOL, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    difference = (got.float() - want.float()).abs().max().item()
    assert difference <= tol, f"{what}: {difference:.3g} > {tol:g}"


def run(model, batch, interventions, how):
    """Results of ``interventions`` and the logits (trace) or ids (generate)."""
    options = {"remote": "local"} if how == "remote" else {}
    with torch.no_grad():
        if how == "generate":
            with model.generate(batch, max_new_tokens=NEW) as tr:
                found = mech.apply(model, batch, *interventions)
                out = tr.result.save()
        else:
            with model.trace(batch, **options):
                found = mech.apply(model, batch, *interventions)
                out = model.logits.save()
    return (found if isinstance(found, tuple) else (found,)), out


def caches():
    return [mech.Cache(list(NAMES), positions="image"),
            mech.Cache(list(NAMES) + ["attn.pattern"], positions="last", layers=[0, 2, 3]),
            mech.Cache(["image_embeds"], positions="image"),
            mech.Cache(["resid_post", "attn.pattern"], positions=[-1, -3], layers=[1])]


def test_cache_matches_hooks_in_trace_and_generate(models, model, batch, reference):
    found, _ = reference
    eager = models["eager"].nn._module
    with torch.no_grad():
        attentions = eager(**batch.inputs, output_attentions=True).attentions
    image = positions(batch, model.image_token_id, "image")
    wanted = {0: image, 1: positions(batch, model.image_token_id, "last"), 2: image,
              3: positions(batch, model.image_token_id, [-1, -3])}
    heads = model.config.text_config.num_attention_heads
    local = None
    for how in ("trace", "generate"):
        results, _ = run(model, batch, caches(), how)
        local = local or results
        for c, (cache, result) in enumerate(zip(caches(), results)):
            rows = wanted[c]
            assert result["valid"].sum(-1).tolist() == [len(r) for r in rows]
            for name in cache.names:
                value = result[name]
                for b, row in enumerate(rows):
                    n = len(row)
                    if name == "image_embeds":
                        close(value[b, :n], found["embeds"][b, row])
                        assert value[b, n:].abs().sum() == 0
                        continue
                    for i, layer in enumerate(result["layers"]):
                        if name == "attn.pattern":  # [P, heads, seq] against eager weights
                            close(value[b, i, :n], attentions[layer][b, :, row].transpose(0, 1))
                        else:
                            want = found[(name, layer)][b, row]
                            close(value[b, i, :n], want.unflatten(-1, (heads, -1)) if name == "attn.z" else want,
                                  what=f"{how} {name} layer {layer} row {b} cache {c}")
                        assert value[b, i, n:].abs().sum() == 0  # padded slots
    # The adapter's attention and MLP outputs are what joins the residual stream:
    first = local[0]
    close(first["resid_pre"] + first["attn_out"] + first["mlp_out"], first["resid_post"], 1e-5)
    # Nothing but the asked tensors: batch x layers x P x width, plus the [batch, P] layout.
    sizes = {k: v.numel() for k, v in first.items() if isinstance(v, torch.Tensor)}
    n_image = int(batch.image_counts.max())
    hidden = model.config.text_config.hidden_size
    assert sizes["resid_pre"] == batch.size * model.n_layers * n_image * hidden
    assert sum(sizes.values()) == sum(sizes[n] for n in NAMES) + 2 * batch.size * n_image
    assert first["layers"] == list(range(model.n_layers))
    if model.family.name == "llava-1.5":  # the projector's own output is the image_embeds
        out = {}
        handle = model.nn._module.model.multi_modal_projector.register_forward_hook(
            lambda m, a, o: out.setdefault("projected", o))
        with hooks(handle), torch.no_grad():
            model.nn._module(**batch.inputs)
        close(local[2]["image_embeds"], out["projected"])


PATCHES = [("resid_pre", [1], "image"), ("attn.z", [2], "last"), ("mlp_out", [0, 3], "image"),
           ("attn_out", [1], [-1, -2]), ("resid_post", [2], "last"), ("ln1", [1], "image"),
           ("image_embeds", None, "image")]


def target_rows(logits, batch):
    return logits[:batch.size]


def test_patch_matches_a_two_pass_patch_by_hand(model, batch, source):
    module = model.nn._module
    both = mech.join(model, batch, source)
    with torch.no_grad(), model.trace(batch):
        clean_target = model.logits.save()
    real = batch.inputs["attention_mask"].bool()
    for name, layers, where in PATCHES:
        patch = mech.Patch(name, layers=layers, positions=where, source=source)
        _, logits = run(model, both, [patch], "trace")
        ref_name, ref_layers = ("resid_pre", [0]) if name == "image_embeds" else (name, layers)
        t_pos = positions(batch, model.image_token_id, where)
        s_pos = positions(source, model.image_token_id, where)
        want, _ = two_pass_patch(module, batch, source, ref_name, ref_layers, t_pos, s_pos)
        got = target_rows(logits, batch)[:, -batch.seq_len:]
        assert (got - want).abs()[real].max().item() <= TOL, name
        assert (got - clean_target).abs()[real].max().item() > 1e-3, f"patching {name} changed nothing"
        # the source rows run as they do alone
        assert (logits[batch.size:, -source.seq_len:] - module(**source.inputs).logits).abs()[
            source.inputs["attention_mask"].bool()].max().item() <= TOL


def test_patch_in_generate_from_a_cache_and_composed(model, batch, source):
    module = model.nn._module
    both = mech.join(model, batch, source)
    t_pos = positions(batch, model.image_token_id, "image")
    s_pos = positions(source, model.image_token_id, "image")
    patch = mech.Patch("resid_pre", layers=[1, 2], positions="image", source=source)
    want_logits, want_ids = two_pass_patch(module, batch, source, "resid_pre", [1, 2], t_pos, s_pos, new_tokens=NEW)
    _, ids = run(model, both, [patch], "generate")
    assert torch.equal(ids[:batch.size, -(batch.seq_len + NEW):], want_ids)
    # From a cache of the source run: the same patch, with the target batch alone.
    (cached,), _ = run(model, source, [mech.Cache("resid_pre", positions="image", layers=[1, 2])], "trace")
    (_, logits) = run(model, batch, [mech.Patch("resid_pre", layers=[1, 2], positions="image", source=cached)],
                      "trace")
    close(logits, want_logits)
    # Composed: a zero-mask at layer 3 after the patch, and a cache that sees the patched value.
    mult = multiplier(batch.inputs["input_ids"], model.image_token_id, 0.0)
    zero = scale_hook(decoder_layers(module), 3, "input", mult, batch.seq_len)
    want, _ = two_pass_patch(module, batch, source, "resid_pre", [1, 2], t_pos, s_pos, also=[zero])
    (seen, _, _), logits = run(model, both, [mech.Cache("resid_pre", positions="image", layers=[2]),
                                             mech.Patch("resid_pre", layers=[1, 2], positions="image", source=source),
                                             mech.ZeroImage(layer=3)], "trace")
    close(target_rows(logits, batch)[:, -batch.seq_len:][batch.inputs["attention_mask"].bool()],
          want[batch.inputs["attention_mask"].bool()])
    close(seen["resid_pre"][:batch.size], seen["resid_pre"][batch.size:])  # patched: the source's values


def test_logit_lens_matches_norm_and_lm_head_by_hand_in_trace_and_generate(model, batch, reference):
    found, logits = reference
    module = model.nn._module
    targets = torch.tensor([[3, 5], [4, 6], [7, 8]])
    lenses = [mech.LogitLens(positions="image", top_k=3, targets=targets),
              mech.LogitLens(positions="last", top_k=2, targets=[5, 9], at="resid_pre", layers=[0, 3])]
    rows = [positions(batch, model.image_token_id, "image"), positions(batch, model.image_token_id, "last")]
    local = None
    for how in ("trace", "generate"):
        results, _ = run(model, batch, lenses, how)
        local = local or results
        for lens_, result, where in zip(lenses, results, rows):
            site = "resid_post" if lens_.at == "resid_post" else "resid_pre"
            ids = torch.as_tensor(lens_.targets).expand(batch.size, -1)
            for i, layer in enumerate(result["layers"]):
                for b, row in enumerate(where):
                    manual = lens(module, found[(site, layer)][b, row])  # [n, vocab]
                    top = manual.topk(lens_.top_k, -1)
                    n = len(row)
                    assert torch.equal(result["top_ids"][b, i, :n], top.indices)
                    close(result["top_logits"][b, i, :n], top.values)
                    chosen = manual[:, ids[b]]  # [n, T]
                    close(result["target_logits"][b, i, :n], chosen)
                    order = torch.sort(manual, dim=-1, descending=True, stable=True).indices
                    ranks = order.argsort(dim=-1).gather(-1, ids[b].expand(n, -1))
                    tied = (manual[:, None, :] == chosen[..., None]).sum(-1) > 1
                    got = result["target_ranks"][b, i, :n]
                    assert torch.equal(got[~tied], ranks[~tied])  # the position in a sort, untied
    # At the last layer the lens is the model's own prediction.
    image = local[0]
    for b, row in enumerate(rows[0]):
        close(image["top_logits"][b, -1, :len(row), 0], logits[b, row].max(-1).values.float())


def test_remote_local_equals_local(model, batch, source):
    """Cache, Patch and LogitLens composed in one trace through nnsight's serialisation path
    (``remote="local"``) give the local run's values exactly."""
    both = mech.join(model, batch, source)
    interventions = [mech.Patch("resid_pre", layers=[1], positions="image", source=source),
                     mech.Cache(["resid_post", "attn.z", "attn.pattern", "image_embeds"], positions="image",
                                layers=[1, 2]),
                     mech.LogitLens(positions="last", top_k=2, targets=[3, 4])]
    local, logits = run(model, both, interventions, "trace")
    remote, remote_logits = run(model, both, interventions, "remote")
    import cloudpickle  # the patch ships the source's name, not a second copy of its inputs
    from mech.join import Part

    by_name = mech.Patch("resid_pre", layers=[1], positions="image", source=Part(source.extras["part"]))
    assert cloudpickle.dumps(interventions[0]) == cloudpickle.dumps(by_name)
    assert torch.equal(logits, remote_logits)
    for got, want in zip(remote, local):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v for k, v in want.items())
