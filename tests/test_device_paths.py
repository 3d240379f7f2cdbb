"""Every choice the GPU path makes, forced on the CPU: CI has no GPU, and a green run proves nothing about a branch it
never took. The first GPU run of harness failed at its first optimizer step (a fused AdamW with gradient clipping
under bf16), a branch no CPU test had taken; these tests take each such branch here.

Where a branch cannot run without a GPU, the code says why in a one-line comment beside it (docs/gpu.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import run_cli, tiny_args
from mlflow.tracking import MlflowClient

from harness.errors import ConfigError
from harness.models.base import HarnessModule
from harness.run.training import precision_plugins
from harness.runtime import auto_precision, device_type, fused_devices, resolve_fused, set_sdpa_backend

# ---- the fused optimizer with clipping, through `harness run` ------------------------------------------------------


def _finished_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize(
    "precision",
    [
        # the GPU profile's own settings: bf16 autocast, fused AdamW, clipping at 1.0, loader workers, pinned memory
        # (pinning itself needs a CUDA driver: torch leaves a CPU loader's batches unpinned), an SDPA kernel pinned
        "bf16-mixed",
        # float16 with its loss scaler: the scaler must unscale the fused optimizer's gradients before clipping
        "16-mixed",
    ],
)
def test_a_run_with_the_gpu_settings_trains_and_logs_the_choice(precision, data_dir, tiny_model, tracking_uri, capsys):
    args = tiny_args(
        data_dir,
        tiny_model,
        tracking_uri,
        **{
            "trainer.precision": precision,
            "optim.fused": "true",
            "trainer.gradient_clip_val": "1.0",
            "data.num_workers": "2",
            "data.pin_memory": "true",
            "model.sdpa_backend": "math",
            # fewer, fuller steps: batches by a token budget, for training and evaluation
            "data.max_tokens": "640",
            "data.eval_max_tokens": "2048",
        },
    )
    assert run_cli(["run", "imdb", *args]) == 0, capsys.readouterr().err
    client, run = _finished_run(tracking_uri)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.fused"] == "true" and params["trainer.precision"] == precision
    assert params["trainer.gradient_clip_val"] == "1.0" and params["data.num_workers"] == "2"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert losses and all(v == v and abs(v) < 100 for v in losses)
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0 and run.data.metrics["test_examples"] == 96
    assert params["data.max_tokens"] == "640"


def test_auto_logs_the_fused_choice_made_for_this_machine(data_dir, tiny_model, tracking_uri, capsys):
    args = tiny_args(data_dir, tiny_model, tracking_uri, **{"data.train_size": "32", "data.test_size": "32"})
    assert run_cli(["run", "imdb", *args]) == 0, capsys.readouterr().err
    _, run = _finished_run(tracking_uri)
    assert run.data.params["optim.fused"] == ("true" if "cpu" in fused_devices() else "false")


# ---- the optimizer step itself: fused equals unfused, clipping included, under each precision ---------------------


class _Linear(torch.nn.Module):
    """A model with the interface a harness module expects (inputs -> an output with .loss)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.body(input_ids.float())
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits.float(), labels))


class _Module(HarnessModule):
    def __init__(self, fused: bool, bad_grad_at: int = -1):
        super().__init__(
            {"lr": 1e-2, "weight_decay": 0.01, "warmup_ratio": 0.0, "scheduler": "constant", "betas": [0.9, 0.999]}
            | {"eps": 1e-8, "fused": fused}
        )
        self.model = _Linear()
        self.bad_grad_at = bad_grad_at

    def on_after_backward(self) -> None:
        if self.trainer.global_step == self.bad_grad_at:  # one infinite gradient, the loss still finite
            next(self.parameters()).grad[0, 0] = float("inf")


def _train(
    fused: bool, precision: str, clip: float, callbacks=(), bad_grad_at: int = -1
) -> tuple[_Module, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(8, 16) * 4
    batch = {"input_ids": x, "attention_mask": torch.ones(8, 16), "labels": (x[:, 0] > 0).long()}
    module = _Module(fused, bad_grad_at)
    lightning_precision, plugins = precision_plugins(precision, "cpu")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=lightning_precision,
        plugins=plugins,
        gradient_clip_val=clip,
        max_steps=6,
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # the same batch each step: the loss falls and the norms change
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 6, batch_size=None))
    return module, torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_fused_adamw_with_clipping_equals_the_unfused_step(precision):
    """Clipping binds (0.05 is below every step's norm): a fused step that clipped scaled fp16 gradients, or skipped
    clipping, would end far from the unfused one, which Lightning unscales and clips itself."""
    fused, w_fused = _train(True, precision, clip=0.05)
    plain, w_plain = _train(False, precision, clip=0.05)
    start = torch.cat([p.detach().flatten() for p in _Module(False).parameters()])
    assert fused.trainer.optimizers[0].defaults["fused"] and not plain.trainer.optimizers[0].defaults["fused"]
    moved = float((w_plain - start).abs().max())
    assert moved > 1e-3  # the steps were taken
    assert float((w_fused - w_plain).abs().max()) < 1e-4 * max(1.0, moved), precision
    _, w_looser = _train(True, precision, clip=1e-4)
    assert float((w_looser - w_fused).abs().max()) > 1e-4  # another bound moves the weights otherwise: it clips


def _cfg(precision: str = "32-true") -> SimpleNamespace:
    return SimpleNamespace(
        trainer=SimpleNamespace(precision=precision, gradient_clip_val=0.05), optim=SimpleNamespace(lr=1e-2)
    )


def test_one_gradient_norm_pass_per_step_serves_clipping_and_the_divergence_check(monkeypatch):
    from harness.run.callbacks import DivergenceCheck

    calls = []
    norm = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *a, **k: calls.append(1) or norm(*a, **k))
    _train(True, "bf16-mixed", clip=0.05, callbacks=[DivergenceCheck(every=1, cfg=_cfg("bf16-mixed"))])
    assert len(calls) == 6  # one per optimizer step (the check used to take a second pass of its own)


def test_an_infinite_gradient_under_clipping_fails_the_run_at_its_step():
    from harness.errors import RunFailed
    from harness.run.callbacks import DivergenceCheck

    with pytest.raises(RunFailed, match="the gradients became NaN or infinite at step 3"):
        _train(True, "32-true", clip=0.05, callbacks=[DivergenceCheck(every=1, cfg=_cfg())], bad_grad_at=2)


# ---- the decisions themselves -------------------------------------------------------------------------------------


def test_fused_is_resolved_for_the_device_and_refused_where_torch_has_no_kernel():
    assert resolve_fused("auto", "cuda") is True and resolve_fused("auto", "cpu") is ("cpu" in fused_devices())
    assert resolve_fused(False, "cuda") is False and resolve_fused(True, "cpu") is True
    assert resolve_fused("auto", "tpu") is False
    with pytest.raises(ConfigError, match=r"optim.fused=true, but this torch .* no fused AdamW kernel for tpu"):
        resolve_fused(True, "tpu")


def test_auto_precision_for_each_device():
    assert auto_precision("cuda", bf16=True) == "bf16-mixed"  # Ampere and later (the H200)
    assert auto_precision("cuda", bf16=False) == "16-mixed"  # older GPUs: float16 with a loss scaler
    assert auto_precision("cpu", bf16=True) == "bf16-mixed"
    assert auto_precision("cpu", bf16=False) == "32-true"


def test_device_type_follows_the_accelerator():
    assert device_type("gpu") == device_type("cuda") == "cuda" and device_type("cpu") == "cpu"
    assert device_type("auto") == ("cuda" if torch.cuda.is_available() else device_type("auto"))


def test_16_mixed_gets_a_float16_plugin_on_every_device():
    for accelerator, device in (("cpu", "cpu"), ("gpu", "cuda")):
        precision, plugins = precision_plugins("16-mixed", accelerator)
        assert precision is None and plugins[0].precision == "16-mixed" and plugins[0].device == device
    assert precision_plugins("bf16-mixed", "gpu") == ("bf16-mixed", [])


def test_the_sdpa_kernel_switch_applies_on_the_cpu_too():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q = torch.randn(1, 2, 8, 4)
    try:
        set_sdpa_backend("efficient")  # a GPU-only kernel: the CPU has none left to use
        with pytest.raises(RuntimeError, match="No viable backend"):
            sdpa(q, q, q)
        set_sdpa_backend("math")
        assert torch.allclose(sdpa(q, q, q), sdpa(q.double(), q.double(), q.double()).float(), atol=1e-5)
    finally:
        set_sdpa_backend("auto")
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_the_monitors_dispatch_no_device_work_on_an_ordinary_step():
    """The divergence check and the step monitor keep what a step gives them (its loss, clipping's norm, the host's
    token count) and read it every `every` steps: an ordinary step dispatches no aten operation of theirs at all."""
    from harness.run.callbacks import DivergenceCheck, StepMonitor

    check, monitor = DivergenceCheck(every=10, cfg=_cfg("bf16-mixed")), StepMonitor(every=10)
    module = SimpleNamespace(grad_norm=torch.tensor(0.5), host_tokens=0, _last_throughput={})
    trainer = SimpleNamespace(global_step=3, world_size=1, optimizers=[], loggers=[])
    batch = {"attention_mask": torch.ones(8, 64, dtype=torch.long)}
    loss = torch.tensor(0.69, requires_grad=True) * 1.0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        check.on_train_batch_end(trainer, module, {"loss": loss}, batch, 3)
        monitor.on_train_batch_end(trainer, module, {"loss": loss}, batch, 3)
    views = ("aten::detach", "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::alias")
    ops = [e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in views]
    assert ops == [] and len(check._values) == 2 and module.grad_norm is None
    # the check step reads them all at once, and a bad value there fails the run at its own step
    check._keep(torch.tensor(float("nan")), 5, 1)
    trainer.global_step = 10
    from harness.errors import RunFailed

    with pytest.raises(RunFailed, match="the gradients became NaN or infinite at step 5"):
        check.on_train_batch_end(trainer, module, {"loss": loss}, batch, 10)


# ---- the training set held on the device (data.device_resident; auto = on a GPU when it fits) ---------------------


def _rows(n: int, pair: bool, seed: int = 0):
    import numpy as np

    from harness.data.base import TokenizedDataset

    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 70, size=n)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    seqs = {"input_ids": (rng.integers(5, 30000, size=offsets[-1]), offsets)}
    if pair:
        seqs["token_type_ids"] = (rng.integers(0, 2, size=offsets[-1]), offsets)
        seqs["offset_start"] = (rng.integers(-1, 900, size=offsets[-1]), offsets)
    return TokenizedDataset(seqs, {"_row": np.arange(n) * 3, "label": rng.integers(0, 2, n)})


@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("multiple", [None, 8, 64])
def test_a_resident_batch_equals_the_host_collators_batch(pair, multiple):
    """The same keys, values, shapes and dtypes as the host's padding, for any choice of rows (QA's offsets pad with
    -1, like its collator)."""
    from harness.data.base import PadCollator
    from harness.data.resident import ResidentStore

    ds = _rows(120, pair)
    collator = PadCollator(0, multiple, {"offset_start": -1})
    store = ResidentStore(ds, collator.pad_values, multiple)
    for index in ([3, 7, 1], [0], list(range(120)), [119, 2, 2], [int(ds.lengths.argmin())]):
        host, gathered = collator(ds.__getitems__(index)), store.batch(index).to("cpu")
        assert sorted(host) == sorted(gathered)
        for key in host:
            assert host[key].dtype == gathered[key].dtype, key
            assert torch.equal(host[key], gathered[key]), key
        assert store.batch(index).tokens == int(host["attention_mask"].sum())


def test_auto_holds_a_split_on_the_device_only_on_a_gpu_and_when_it_fits():
    from harness.data.resident import FREE_MEMORY_SHARE, ResidentStore, fits, resident_bytes

    ds = _rows(100, pair=True)
    width = -(-int(ds.lengths.max()) // 8) * 8
    # input_ids, token_type_ids, offset_start and the mask as int64 matrices, plus two int64 scalars per row
    assert resident_bytes(ds, 8) == 100 * width * 8 * 4 + 2 * 100 * 8
    assert fits(1000, int(1000 / FREE_MEMORY_SHARE)) and not fits(1001, int(1000 / FREE_MEMORY_SHARE))
    # the splits share one budget: what is already held counts, against the memory that was free before it
    assert fits(500, 4500, held=500) and not fits(501, 4500, held=500)
    assert ResidentStore(ds, {}, 8).nbytes == resident_bytes(ds, 8)


def _losses_and_metrics(uri: str):
    client, run = _finished_run(uri)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    return run, losses


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_resident_training_set_trains_exactly_as_the_host_loader(precision, data_dir, tiny_model, tmp_path, capsys):
    """`harness run` with the splits gathered on the device (forced on the CPU) against the ordinary loader: the same
    batches in the same order, so the same loss at every logged step and the same test predictions."""
    results = {}
    for setting in ("false", "true"):
        uri = f"sqlite:///{tmp_path / setting}.db"
        args = tiny_args(
            data_dir,
            tiny_model,
            uri,
            **{"data.device_resident": setting, "trainer.precision": precision, "data.pad_to_multiple_of": "64"},
        )
        args.append(f"tracking.output_dir={tmp_path / setting}")
        assert run_cli(["run", "imdb", *args]) == 0, capsys.readouterr().err
        results[setting] = _losses_and_metrics(uri)
    (host_run, host_losses), (dev_run, dev_losses) = results["false"], results["true"]
    assert dev_run.data.params["data.device_resident"] == "true" and len(host_losses) >= 5
    assert dev_run.data.tags["data.resident_splits"] == "train,validation,test"
    assert host_run.data.tags["data.resident_splits"] == "none"
    assert dev_losses == host_losses
    for key in ("test_accuracy", "test_examples", "val_loss"):
        assert dev_run.data.metrics[key] == host_run.data.metrics[key], key
    # the step monitor counted the same real tokens (the resident batch brings its count from the host)
    assert dev_run.data.metrics["train_padding_share"] == pytest.approx(host_run.data.metrics["train_padding_share"])


def test_device_resident_true_on_a_family_that_builds_batches_on_the_host_is_one_line(capsys):
    assert run_cli(["run", "mlm_imdb", "data.device_resident=true"]) == 2
    err = capsys.readouterr().err
    assert "data.device_resident=true (override 'data.device_resident=true')" in err
    assert "set data.device_resident=auto or false" in err and "Traceback" not in err


def test_the_step_profile_counts_what_a_gpu_ran_from_its_profiler_events():
    """A GPU profile holds device events (kernels, copies) beside the host's; the CUDA activity itself needs a GPU, so
    the counting is checked on events shaped as torch.profiler gives them (name, device type, time range, parent)."""
    from torch.autograd import DeviceType

    from harness.commands.stepprofile import StepWindow

    def event(name, device=DeviceType.CPU, us=0.0, parent=None):
        return SimpleNamespace(
            name=name, device_type=device, time_range=SimpleNamespace(elapsed_us=lambda: us), cpu_parent=parent
        )

    mm = event("aten::mm")
    check = event("aten::is_nonzero")  # transformers' `if padding_mask.all():` on every forward
    item = event("aten::item", parent=check)
    fused = event("aten::_fused_adamw_")
    events = [
        mm,
        event("aten::addmm", parent=mm),  # inside another aten call: not counted twice
        event("aten::_local_scalar_dense"),
        check,
        item,
        event("aten::_local_scalar_dense", parent=item),  # a sync, however deep
        fused,
        event("aten::_local_scalar_dense", parent=event("aten::item", parent=fused)),  # a CPU fused optimizer's own
        event("cudaLaunchKernel", parent=mm),
        event("cudaStreamSynchronize"),
        event("ampere_bf16_s16816gemm", DeviceType.CUDA, 300.0),
        event("void at::native::vectorized_elementwise_kernel", DeviceType.CUDA, 20.0),
        event("Memcpy HtoD (Pageable -> Device)", DeviceType.CUDA, 80.0),
    ]
    window = StepWindow(0, 2, 2, device="cuda")
    window._count(events)
    window.ticks, window.prof = [0.0, 0.004, 0.008], False  # 4 ms steps
    r = window.result()
    # aten::mm, the top-level read and the fused step (is_nonzero launches no kernel); two syncs: the top-level one
    # and the one under is_nonzero (the fused optimizer's own is not one on a GPU)
    assert (window.ops, window.syncs) == (3, 2)
    assert r["kernels_per_step"] == 1.0 and r["copies_per_step"] == 0.5 and r["cuda_syncs_per_step"] == 0.5
    assert r["device_ms_per_step"] == pytest.approx(0.2) and r["device_busy_share"] == pytest.approx(0.05)
    # a CPU profile reports none of the device's columns
    cpu = StepWindow(0, 2, 2)
    cpu._count(events[:3])  # the mm, its addmm and one sync
    cpu.ticks, cpu.prof = [0.0, 0.004, 0.008], False
    assert "kernels_per_step" not in cpu.result()
    # and the GPU check's summary shows them for every side
    from harness.commands.stepprofile import table

    side = {**r, "optimizer": "AdamW (fused=True)"}
    text = table(
        {"harness": side, "trainer": side, "plain": side, "ops_vs_trainer": 1.0, "host_vs_plain": 1.0}
        | {"goals": {"ops_vs_trainer": True, "host_vs_plain": True}}
    )
    assert "kernels/step" in text and "GPU busy" in text and "     5%" in text and "ms/step" in text


@pytest.mark.parametrize(
    "task, overrides, refused",
    [
        ("imdb", ["model.sdpa_backend=flash"], "model.sdpa_backend=flash on a CUDA device"),
        ("squad", ["model.sdpa_backend=flash"], "model.sdpa_backend=flash on a CUDA device"),
        ("clm_imdb", ["model.sdpa_backend=flash"], None),  # packed blocks: no padding, no mask to refuse
        ("clm_imdb", ["model.sdpa_backend=flash", "data.packing=false"], "model.sdpa_backend=flash on a CUDA device"),
        ("imdb", ["model.sdpa_backend=efficient"], None),
        (
            "imdb",
            ["trainer.compile=reduce-overhead", "trainer.accumulate_grad_batches=2"],
            "trainer.compile=reduce-overhead with trainer.accumulate_grad_batches=2",
        ),
        ("imdb", ["trainer.compile=reduce-overhead"], None),
        ("imdb", ["trainer.compile=true", "trainer.accumulate_grad_batches=2"], None),
    ],
)
def test_what_cuda_cannot_run_together_is_refused_before_training(task, overrides, refused):
    """A flash kernel with a padding mask stopped the first forward on CUDA ("No available kernel"); CUDA graphs with
    gradient accumulation replay while gradients are alive. The CUDA branch of the check, taken here on the CPU."""
    from harness.config import resolve_run_config
    from harness.families.registry import get_task
    from harness.runtime import check_combinations

    t = get_task(task)
    cfg = resolve_run_config(t, ["profile=quick", *overrides])
    if refused is None:
        check_combinations(cfg, t.family, "cuda")
    else:
        with pytest.raises(ConfigError) as e:
            check_combinations(cfg, t.family, "cuda")
        assert e.value.message.startswith(refused)
    check_combinations(cfg, t.family, "cpu")  # the CPU has neither limit


def test_after_a_fit_reserved_but_empty_memory_counts_as_free():
    """mem_get_info counts the caching allocator's reserved memory as used: after a memory-heavy fit the test split
    fell back to host batching without cause. What the allocator holds empty is placeable."""
    from harness.data.resident import fits, usable_free

    free, reserved, allocated = 1 << 30, 30 << 30, 2 << 30  # 1 GiB free by the driver, 28 GiB reserved and empty
    split = 4 << 30
    assert not fits(split, free)  # what the driver alone says
    assert fits(split, usable_free(free, reserved, allocated))


@pytest.mark.parametrize("mode", ["full", "prompt_tuning"])
def test_an_encoder_forward_makes_no_host_device_sync(tiny_model, mode):
    """transformers asks a 2-D padding mask whether it holds padding (`if padding_mask.all():`): a sync on every
    forward on a GPU. The harness hands an SDPA encoder the 4-D mask instead: no `_local_scalar_dense` in the forward,
    the same logits. Prompt tuning keeps the 2-D mask (its virtual tokens extend it)."""
    from harness.models.classification import SequenceClassifier

    m = SequenceClassifier(labels=["negative", "positive"], optim={}, model_path=str(tiny_model)).eval()
    if mode == "prompt_tuning":
        from harness.models import transfer

        m.model, _ = transfer.apply(m.model, {"mode": "prompt_tuning", "virtual_tokens": 4}, m.peft_task)
    ids = torch.randint(1000, 2000, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[0, 9:] = 0
    mask[3, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.profiler.profile() as prof, torch.no_grad():
        ours = m(batch).logits
    syncs = sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense")
    with torch.no_grad():
        plain = m.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits
    assert torch.equal(ours, plain)
    if mode == "full":
        assert syncs == 0 and m.model_inputs(batch)["attention_mask"].shape == (4, 1, 1, 16)
    else:
        assert m.model_inputs(batch)["attention_mask"].dim() == 2


def test_a_run_that_asked_for_one_thread_does_not_leave_the_next_on_one(monkeypatch):
    """trainer.num_threads=1 in one run (a compression test, a study's trial) left every later run of the process on
    one thread; its float sums then split differently, and a resumed run ended a hair from the run it continued."""
    from harness import runtime
    from harness.config import RunConfig

    monkeypatch.setattr(runtime, "_DEFAULT_THREADS", None)
    default = torch.get_num_threads()
    try:
        one = RunConfig(task="imdb")
        one.trainer.num_threads = 1
        runtime.configure_runtime(RunConfig(task="imdb"))
        runtime.configure_runtime(one)
        assert torch.get_num_threads() == 1
        runtime.configure_runtime(RunConfig(task="imdb"))
        assert torch.get_num_threads() == default
    finally:
        torch.set_num_threads(default)
