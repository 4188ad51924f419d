"""FSDP2 sharded DMD2 on two CPU processes through Lightning's ModelParallelStrategy (``fully_shard`` in
``DistillationModule.configure_model``): student and fake score really sharded (each rank holds half of every
parameter), the teacher replicated or sharded by config, and the losses equal the unsharded DDP run's within float
tolerance at every step."""

import json

import pytest
from support.launch import launch_two_ranks

STEPS = 9  # optimizer steps: 3 DMD2 iterations (fake, student) + (fake) ... with fake_updates_per_student=2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch_two_ranks(["tests/support/fsdp_driver.py", str(out), str(STEPS)])
    runs = {run: [json.loads((out / run / f"rank{r}.json").read_text()) for r in (0, 1)]
            for run in ("ddp", "fsdp2", "fsdp2_teacher")}
    for run in runs:
        runs[run][0]["sample_dirs"] = sorted(p.name for p in (out / run / "samples").iterdir())
    return runs


def _sharded(shards, prefix):
    sizes = [v for k, v in shards.items() if k.startswith(prefix + ".")]
    assert sizes, prefix
    return all(local < full for local, full in sizes if full > 1), all(local == full for local, full in sizes)


def test_fsdp2_shards_student_and_fake_score_and_replicates_the_teacher_by_default(runs):
    for rank in (0, 1):
        shards = runs["fsdp2"][rank]["shards"]
        assert _sharded(shards, "student")[0] and _sharded(shards, "fake_score")[0] and _sharded(shards, "ema")[0]
        assert _sharded(shards, "teacher")[1], "teacher should be a full replica"
        # together the two ranks hold each parameter exactly once
        for k, (local, full) in shards.items():
            if not k.startswith("teacher."):
                assert local + runs["fsdp2"][1 - rank]["shards"][k][0] == full, k
        assert _sharded(runs["fsdp2_teacher"][rank]["shards"], "teacher")[0], "shard_teacher=true did not shard"
        assert _sharded(runs["ddp"][rank]["shards"], "student")[1]


@pytest.mark.parametrize("run", ["fsdp2", "fsdp2_teacher"])
def test_sharded_losses_match_the_unsharded_run(runs, run):
    for rank in (0, 1):
        ref, got = runs["ddp"][rank]["losses"], runs[run][rank]["losses"]
        assert len(ref) == len(got) == 6  # batches: iterations alternate 2 and 1 optimizer steps
        assert runs[run][rank]["iteration"] == runs["ddp"][rank]["iteration"] == 6
        assert any("student" in k for k in ref[-1]) and any("fake_score" in k for k in ref[-1])
        for step, (a, b) in enumerate(zip(ref, got, strict=True)):
            assert a.keys() == b.keys()
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), f"rank {rank} batch {step} {k}"
    # the two ranks saw different data, so equal losses across ranks would mean the data was not split
    assert runs["ddp"][0]["losses"][0] != runs["ddp"][1]["losses"][0]


@pytest.mark.parametrize("run", ["fsdp2", "fsdp2_teacher"])
def test_sharded_ema_averages_and_samples_like_the_unsharded_one(runs, run):
    """The student's EMA is sharded like the student; after the same steps it holds the same (gathered) weights as
    under DDP, and sampling from it (which gathers them) gives the same samples."""
    for rank in (0, 1):
        ref, got = runs["ddp"][rank], runs[run][rank]
        assert ref["ema"].keys() == got["ema"].keys() and ref["ema"]
        for name, (s, sq) in ref["ema"].items():
            assert got["ema"][name] == pytest.approx([s, sq], rel=1e-4, abs=1e-5), name
        assert got["ema_samples"] == pytest.approx(ref["ema_samples"], rel=1e-4, abs=1e-5)
        # an average, not a copy: with decay 0.5 over several student updates it lags the student's weights
        assert any(got["ema"][k] != pytest.approx(got["student"][k], rel=1e-6) for k in got["ema"])


def test_validation_runs_on_every_rank_and_rank_zero_saves_samples(runs):
    """Validation every 3 batches (DMD2 iterations 3 and 6) under DDP and FSDP2: both ranks reach the end (asking
    the trainer for its log dir is a collective, so calling it on rank 0 alone used to deadlock), and rank 0 wrote
    the EMA's samples."""
    for run in runs:
        assert runs[run][0]["sample_dirs"] == ["step_3", "step_6"], run
