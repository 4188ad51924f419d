"""Fake-score memory strategies for DMD2: a trainable full copy vs LoRA adapters on the frozen teacher.

One DMD2 iteration = one fake-score update + one student update (``fake_updates_per_student=1``), on a
diffusers ``UNet2DConditionModel`` of about 20M parameters with random latents ``[B, 4, 16, 16]`` and random
text conditions, CFG 1.75 on the real score, AdamW on every trainable role.

Method. Each strategy runs in its own fresh subprocess. ``peak_memory_mb`` is the peak of live tensor
memory during one DMD2 iteration (the CPU analogue of ``torch.cuda.max_memory_allocated``): the bytes of
every tensor alive at the start of the iteration (teacher, student and fake-score weights, optimizer
states; deduplicated by storage) plus the maximum of the CPU allocator's running "Total Allocated" counter
that ``torch.profiler`` (``profile_memory=True``) records during the iteration (activations, gradients,
temporaries). It is measured on a profiled iteration after a warm-up iteration (so AdamW states exist).
``peak_rss_mb`` is the process's peak RSS (``getrusage`` ``ru_maxrss``) minus its RSS after imports; it also
holds runtime/allocator overhead common to both strategies (~100-200 MB here). ``ms_per_step`` is the
median wall time of ``--repeats`` unprofiled iterations after the warm-up. ``live_ratio_vs_full`` compares
the weights and optimizer states alone (no gradients, no activations): the floor of the peak ratio.

Rows ``+in_backward`` take the optimizer step inside the backward pass, one AdamW per parameter stepped by a
``register_post_accumulate_grad_hook`` that then frees the gradient (PyTorch's "fuse the optimizer step into the
backward pass" recipe), so a role's gradients never all exist at once: they show how much of the peak the
gradients are, not a training mode of the library. One run, same machine::

    python benchmarks/memory.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = "python benchmarks/memory.py"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class InBackward:
    """One AdamW per parameter, stepped by a post-accumulate-grad hook that then frees the gradient; ``step`` and
    ``zero_grad`` (called by ``Engine.step``) have nothing left to do."""

    def __init__(self, params: list, lr: float) -> None:
        import torch

        self.per_param = {p: torch.optim.AdamW([p], lr=lr, foreach=False) for p in params}
        for p in params:
            p.register_post_accumulate_grad_hook(self._step)

    def _step(self, p) -> None:
        self.per_param[p].step()
        p.grad = None

    @property
    def state(self) -> dict:
        return {k: v for opt in self.per_param.values() for k, v in opt.state.items()}

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def worker(strategy: str, repeats: int, threads: int, batch: int, in_backward: bool = False) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from unidistill.denoiser import Adapter, Denoiser, freeze
    from unidistill.engine import Engine
    from unidistill.objectives import DMD2, Batch, FakeScoreOptions
    from unidistill.paths import RectifiedFlow

    class UNetAdapter(Adapter):
        def __call__(self, network, x_t, t, cond, guidance):
            return network(x_t, t * 1000.0, encoder_hidden_states=cond).sample

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = rss_mb()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(64, 128, 256, 256), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=256, attention_head_dim=8)
    params = sum(p.numel() for p in unet.parameters())
    path = RectifiedFlow()
    teacher = freeze(Denoiser(unet, path, "flow", UNetAdapter()))
    student = Denoiser(UNet2DConditionModel.from_config(unet.config), path, "flow", UNetAdapter())
    student.network.load_state_dict(unet.state_dict())
    objective = DMD2(guidance_scale=1.75, fake_updates_per_student=1,
                     fake_score=FakeScoreOptions(memory=strategy, lora_rank=8))
    engine = Engine(objective, student, teacher, latent_shape=(4, 16, 16), null_condition=torch.zeros_like)
    roles = engine.roles()
    optimizer = InBackward if in_backward else torch.optim.AdamW
    opts = {r: optimizer([p for p in roles[r].parameters() if p.requires_grad], lr=1e-5)
            for r in objective.trainable_roles}
    trainable_fake = sum(p.numel() for p in roles["fake_score"].parameters() if p.requires_grad)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(batch, 8, 256, generator=g)
    times, tensor_peak, live = [], 0.0, 0

    def step(it: int) -> None:
        engine.step(Batch(None, cond=cond, size=batch), it, opts)

    for it in range(repeats + 2):
        if it == 1:
            live = live_tensor_bytes(roles, opts)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
                step(it)
            trace = Path(tempfile.mkstemp(suffix=".json")[1])
            prof.export_chrome_trace(str(trace))
            events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
            trace.unlink()
            tensor_peak = (live + max([0] + [e["args"]["Total Allocated"] for e in events])) / 2**20
            continue
        t0 = time.perf_counter()
        step(it)
        times.append((time.perf_counter() - t0) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": f"UNet2DConditionModel-{params / 1e6:.1f}M",
            "strategy": strategy + ("+in_backward" if in_backward else ""), "live_mb": round(live / 2**20, 1),
            "peak_memory_mb": round(tensor_peak, 1), "ms_per_step": round(statistics.median(times[1:]), 1),
            "peak_rss_mb": round(peak - base, 1), "fake_score_trainable_params": trainable_fake}


def live_tensor_bytes(roles: dict, opts: dict) -> int:
    """Bytes of all weights, buffers, gradients and optimizer states, each storage counted once."""
    import torch

    seen: dict[int, int] = {}

    def add(t: object) -> None:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for module in roles.values():
        for t in [*module.parameters(), *module.buffers()]:
            add(t)
            add(t.grad)
    for opt in opts.values():
        for state in opt.state.values():
            for v in state.values():
                add(v)
    return sum(seen.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--worker", choices=["full", "lora"])
    p.add_argument("--in-backward", action="store_true", help="(worker) step the optimizers inside backward")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.repeats, a.threads, a.batch, a.in_backward)))
        return
    from unidistill.bench import machine

    rows = []
    for in_backward in (False, True):
        for strategy in ("full", "lora"):
            cmd = [sys.executable, __file__, "--worker", strategy, "--repeats", str(a.repeats), "--threads",
                   str(a.threads), "--batch", str(a.batch), *(["--in-backward"] if in_backward else [])]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
    for full, lora in (rows[:2], rows[2:]):  # each compared with the full copy under the same optimizer
        for r in (full, lora):
            r["memory_ratio_vs_full"] = round(r["peak_memory_mb"] / full["peak_memory_mb"], 3)
            r["live_ratio_vs_full"] = round(r["live_mb"] / full["live_mb"], 3)
            r["rss_ratio_vs_full"] = round(r["peak_rss_mb"] / full["peak_rss_mb"], 3)
            r["time_ratio_vs_full"] = round(r["ms_per_step"] / full["ms_per_step"], 3)
    result = {"benchmark": "memory", "command": " ".join([COMMAND, *sys.argv[1:]]), "machine": machine(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "method": "peak_memory_mb: live tensor bytes at the start of a profiled DMD2 iteration (live_mb: "
                        "weights, grads, optimizer states) + max torch.profiler CPU 'Total Allocated' during it; "
                        "+in_backward rows: per-parameter AdamW stepped in backward hooks, ratios against "
                        "full+in_backward; peak_rss_mb: "
                        "getrusage ru_maxrss minus RSS after imports; one subprocess per strategy; ms_per_step: "
                        "median of unprofiled iterations (1 fake-score + 1 student update) after a warm-up",
              "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"{'model':<28}{'strategy':<19}{'live MB':>9}{'peak MB':>9}{'RSS MB':>9}{'ms/step':>10}{'live x':>8}"
          f"{'mem x':>7}{'RSS x':>7}{'time x':>8}{'fake params':>12}")
    for r in rows:
        print(f"{r['model']:<28}{r['strategy']:<19}{r['live_mb']:>9.1f}{r['peak_memory_mb']:>9.1f}"
              f"{r['peak_rss_mb']:>9.1f}{r['ms_per_step']:>10.1f}{r['live_ratio_vs_full']:>8.3f}"
              f"{r['memory_ratio_vs_full']:>7.3f}{r['rss_ratio_vs_full']:>7.3f}{r['time_ratio_vs_full']:>8.3f}"
              f"{r['fake_score_trainable_params']:>12}")


if __name__ == "__main__":
    main()
