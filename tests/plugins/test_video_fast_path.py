"""The video network's inference fast path keeps the numbers of the plain one: the preallocated KV cache reads
like a concatenation of the live chunks, the per-shape constants follow shape changes, a cache write fused with
the next chunk's first call equals the two calls, and inference-mode streams leave the network trainable."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from modalities.video import KVCache, VideoDiT, generate_stream
from modalities.video.network import PatchEmbed, apply_rope, rope_tables
from unidistill.denoiser import Denoiser
from unidistill.paths import RectifiedFlow

CHUNK, SIZE = 2, 8

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(window: int | None = 2, causal: bool = True) -> VideoDiT:
    torch.manual_seed(0)
    net = VideoDiT(size=SIZE, patch=4, dim=16, depth=2, heads=2, cond_dim=8, chunk_size=CHUNK, causal=causal,
                   cache_window=window)
    for p in net.parameters():  # zero-initialised heads/gates would make every output trivially equal
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def frames(n: int, seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


COND = torch.randn(2, 8, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("window", [2, None])
def test_preallocated_cache_reads_like_a_concatenation_of_the_live_chunks(window):
    cache, live = KVCache(depth=1, window=window, chunk_size=CHUNK), []
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate([2, 2, 1, 2, 2, 2, 1, 2]):  # partial chunks too; eviction from the third commit on
        k, v = torch.randn(2, 3, n, 4, generator=g), torch.randn(2, 3, n, 4, generator=g)
        q = torch.randn(2, 3, 2, 4, generator=g), torch.randn(2, 3, 2, 4, generator=g)
        for probe in (q, (k, v)):  # a non-storing call, then the storing one
            ks, vs = cache.extend(0, *probe, store=probe is not q)
            ref_k = torch.cat([*(c[0] for c in live), probe[0]], dim=-2)
            ref_v = torch.cat([*(c[1] for c in live), probe[1]], dim=-2)
            assert torch.equal(ks, ref_k) and torch.equal(vs, ref_v), i
        cache.commit(n)
        live = (live + [(k, v)])[-window:] if window else live + [(k, v)]
        assert len(cache) == sum(c[0].shape[-2] for c in live)
    assert cache.next_frame == 14


def test_grad_enabled_calls_read_the_cache_functionally_and_store_detached():
    cache = KVCache(depth=1, window=1, chunk_size=CHUNK)
    ctx = torch.randn(1, 1, 2, 4)
    cache.extend(0, ctx, ctx, store=True)
    cache.commit(2)
    k = torch.randn(1, 1, 2, 4, requires_grad=True)
    ks, _ = cache.extend(0, k, k, store=True)
    assert torch.equal(ks, torch.cat([ctx, k.detach()], dim=-2)) and ks.requires_grad
    cache.commit(2)  # evicts ctx: shifts the buffer in place
    (ks * torch.arange(4.0)).sum().backward()  # the graph does not hold the buffer, so the shift is harmless
    assert torch.equal(k.grad, torch.arange(4.0).expand(1, 1, 2, 4))
    assert not cache.keys[0].requires_grad


def test_a_grad_call_survives_later_in_place_cache_writes():
    net = tiny_net(window=1)
    net.reset_cache()
    with torch.no_grad(), net.storing():
        net(frames(CHUNK, 1), torch.zeros(2), COND)
    loss = net(frames(CHUNK, 2), torch.full((2,), 0.5), COND).square().mean()
    with torch.no_grad():
        for seed in (3, 4):  # in-place writes and evicting shifts of the buffer the grad call read
            with net.storing():
                net(frames(CHUNK, seed), torch.zeros(2), COND)
            net(frames(CHUNK, seed + 10), torch.full((2,), 0.5), COND)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_cached_masks_and_rotary_tables_follow_shape_changes():
    net = tiny_net()
    for n, chunk in [(4, 2), (6, 2), (6, 3), (6, 3)]:
        net.chunk_size = chunk
        assert torch.equal(net._block_mask(n, torch.device("cpu")), net.block_mask(n, torch.device("cpu")))
    net.causal = False
    assert net._block_mask(6, torch.device("cpu")) is None
    x = torch.randn(3, 5, 8)
    for start, n in [(0, 5), (7, 5), (7, 5), (2, 5)]:
        cos, sin = net._rope(start, n, x.device, x.dtype)
        ang = torch.arange(start, start + n).float()[:, None] / 100.0 ** (torch.arange(0, 8, 2) / 8)
        textbook = x * ang.cos().repeat(1, 2) + torch.cat([-x[..., 4:], x[..., :4]], -1) * ang.sin().repeat(1, 2)
        assert torch.allclose(apply_rope(x, cos, sin), textbook, atol=1e-6)
        assert torch.equal(cos, rope_tables(torch.arange(start, start + n), 8, x.dtype)[0])


def test_changing_chunk_size_after_a_call_gives_the_new_masks_output():
    net = tiny_net()
    fresh = copy.deepcopy(net)
    x, t = frames(6, 5), torch.rand(2, 6)
    net(x, t, COND)
    net.chunk_size = fresh.chunk_size = 3
    assert torch.equal(net(x, t, COND), fresh(x, t, COND))


def test_fused_cache_write_equals_the_write_then_the_call():
    sep, fused, unbounded = tiny_net(window=2), tiny_net(window=2), tiny_net(window=None)
    ctx_t, t = 0.2, torch.full((2,), 0.7)
    times = torch.cat([torch.full((2, CHUNK), ctx_t), t[:, None].expand(2, CHUNK)], dim=1)
    for net in (sep, fused, unbounded):
        net.reset_cache()
    out_sep, out_fused, out_unb = [], [], []
    for i in range(6):  # past the window: the fused call's next chunk must not see the frames its write evicts
        new = frames(CHUNK, 100 + i)
        out_sep.append(sep(new, t, COND))
        out_unb.append(unbounded(new, t, COND))
        if i == 0:
            out_fused.append(fused(new, t, COND))
        else:
            with fused.storing(frames=CHUNK):  # the previous chunk's write, then this chunk
                out_fused.append(fused(torch.cat([frames(CHUNK, 199 + i), new], 1), times, COND)[:, CHUNK:])
        for net in (sep, unbounded):
            with net.storing():
                net(frames(CHUNK, 200 + i), torch.full((2,), ctx_t), COND)
        assert fused.cached_frames() == min(i, 2) * CHUNK
    for a, b in zip(out_sep, out_fused, strict=True):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    assert not torch.allclose(out_sep[-1], out_unb[-1], atol=1e-3)  # eviction did matter
    with pytest.raises(ValueError, match="one chunk"), fused.storing(frames=CHUNK):
        fused(frames(3 * CHUNK, 0), torch.zeros(2), COND)


@pytest.mark.parametrize("context_time", [0.0, 0.2])
def test_fused_stream_equals_the_stream_with_separate_cache_writes(context_time):
    den = Denoiser(tiny_net(window=2), RectifiedFlow(), "flow")
    plain = copy.deepcopy(den)
    plain.network.fuses_cache_writes = False

    def run(model):
        g = torch.Generator().manual_seed(4)
        return torch.stack(list(generate_stream(COND, model, steps=3, generator=g, context_time=context_time,
                                                max_frames=7 * CHUNK)), 1)

    a, b = run(den), run(plain)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_inference_mode_stream_leaves_the_network_trainable():
    net = tiny_net()
    den = Denoiser(net, RectifiedFlow(), "flow")
    for _ in generate_stream(COND, den, steps=2, max_frames=3 * CHUNK):
        pass
    net.train()
    with torch.inference_mode():
        net(frames(4, 0), torch.rand(2, 4), COND)  # masks and rotary tables built in inference mode ...
    net(frames(4, 1), torch.rand(2, 4), COND).square().mean().backward()  # ... are saved for backward here
    net.reset_cache()
    with torch.no_grad(), net.storing():
        net(frames(CHUNK, 2), torch.zeros(2), COND)
    net(frames(CHUNK, 3), torch.rand(2), COND).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_patch_embedding_is_the_strided_convolution():
    embed = PatchEmbed(3, 16, 4, 4)
    x = torch.randn(5, 3, 12, 8)
    assert torch.allclose(embed(x), F.conv2d(x, embed.weight, embed.bias, stride=4), atol=1e-5)
