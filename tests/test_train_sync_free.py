"""The training loop never waits for the device inside an iteration: the steps leave
their losses on the device and the loop reads them back once per ``eval.log_interval``
(with the time it waited for data), still stopping at the first non-finite loss.

A steady-state step of every recipe is run on the CPU under :class:`NoHostSynchronisation`,
which fails on whatever would make the host wait for a CUDA device (its docstring gives
the rule), so that a new synchronisation fails here without a GPU.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from mper import pipeline
from mper.datasets import synthesize
from mper.errors import TrainingDiverged
from mper.ops import proto_accumulate
from mper.train import selftrain
from mper.train.config import load_config
from mper.train.loop import ScalarWindow, Trainer
from mper.train.pretrain import supervised_step
from mper.train.teacher import create_teacher
from test_pipeline import after_optimizer_steps, fill_weights_with_nan, tiny_config


@pytest.fixture(scope="module")
def acdc_data(tmp_path_factory):
    return synthesize("acdc", tmp_path_factory.mktemp("acdc"), cases=5, seed=0, size=(32, 32), progress=False)


# --- the guard: what would make the host wait for a CUDA device ---------------------------


class HostSynchronisation(AssertionError):
    """A training step did something that, on CUDA, makes the host wait for the device."""

    def __init__(self, what: str):
        # name the innermost line of mper that did it
        frame = next(
            (frame for frame in reversed(traceback.extract_stack()) if f"{os.sep}mper{os.sep}" in frame.filename), None
        )
        where = "" if frame is None else f" (in {frame.name}, {Path(frame.filename).name}:{frame.lineno})"
        super().__init__(what + where)


#: aten ops whose CUDA kernels wait for the device whenever they run on device tensors,
#: with the reason, read from PyTorch's CUDA sources (``memcpy_and_sync``, ``.item()``
#: and ``.cpu()`` inside the kernels).
SYNCHRONISING_OPS = {
    "aten::_local_scalar_dense": "reads a value on the host (item, int, float or bool of a tensor)",
    "aten::item": "reads a value on the host",
    "aten::is_nonzero": "reads a value on the host",
    "aten::equal": "returns a host bool computed on the device",
    "aten::nonzero": "sizes its output by the data",
    "aten::masked_select": "sizes its output by the data",
    "aten::_unique": "sizes its output by the data",
    "aten::_unique2": "sizes its output by the data",
    "aten::unique_dim": "sizes its output by the data",
    "aten::unique_consecutive": "sizes its output by the data",
    "aten::unique_dim_consecutive": "sizes its output by the data",
    "aten::isin": "calls unique on large inputs",
    "aten::bincount": "reads the input's min and max on the host",
    "aten::multinomial": "checks the probabilities on the host",
    "aten::mode": "copies each result back with a synchronising copy",
    "aten::_linalg_check_errors": "reads the solver's error codes on the host",
}
#: Indexing ops that turn a boolean mask index into positions with ``nonzero``.
INDEXING_OPS = (
    "aten::index",
    "aten::_unsafe_index",
    "aten::index_put",
    "aten::index_put_",
    "aten::_index_put_impl",
    "aten::_index_put_impl_",
    "aten::_unsafe_index_put",
)
#: Python factories: a tensor they make without a ``device`` lives on the host.
FACTORIES = (
    torch.tensor,
    torch.as_tensor,
    torch.asarray,
    torch.scalar_tensor,
    torch.ones,
    torch.zeros,
    torch.full,
    torch.empty,
    torch.empty_strided,
    torch.eye,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
)
#: Factories that copy Python or host data: given a device, they copy it from the host.
FROM_HOST_DATA = (torch.tensor, torch.as_tensor, torch.asarray)
#: Tensor methods that copy a device tensor's values to the host.
DEVICE_READS = (torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu)


def _one_hot_as_on_cuda(tensor: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
    """``F.one_hot`` as CUDA runs it: with ``num_classes`` it only scatters (the CPU path
    also checks the labels' range, reading their min and max on the host)."""
    if num_classes < 1:  # the classes counted from the labels' max: read on the host on CUDA too
        return F.one_hot(tensor, num_classes)
    shape = (*tensor.shape, num_classes)
    return torch.zeros(shape, dtype=tensor.dtype, device=tensor.device).scatter_(-1, tensor.unsqueeze(-1), 1)


#: Functions whose CPU path synchronises where the CUDA path does not, run as on CUDA.
AS_ON_CUDA = {F.one_hot: _one_hot_as_on_cuda}


def _names_a_device(args: tuple, kwargs: dict) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` moves to a device (rather than only casting)."""
    return "device" in kwargs or any(isinstance(arg, (str, torch.device, torch.Tensor)) for arg in args)


class NoHostSynchronisation(TorchFunctionMode):
    """Raises :class:`HostSynchronisation` on what would make the host wait for a CUDA
    device, while the step runs on the CPU.

    On the CPU every tensor is on "the device", so the guard tells the host from the
    device by where a tensor came from, as it would be on CUDA:

    * host tensors: made in the step by a Python factory (``torch.ones``, ``torch.randint``,
      ``torch.tensor``, ...) without a ``device``, and everything computed from host
      tensors alone. On CUDA these live in host memory, and using them there is free
      (the copy-paste box corner is drawn this way and read with ``int``);
    * Python numbers (a 0-dim tensor PyTorch makes from a number, e.g. ``x[box] = 0``):
      CUDA kernels take them as arguments, from the host, without waiting;
    * device tensors: everything else, i.e. whatever existed before the step (weights,
      the bank, optimizer and monitor state, and the batch, which the loader pins so
      that its copy does not wait) and whatever is computed from a device tensor or
      made with a ``device``.

    It fails on (1) any aten op in :data:`SYNCHRONISING_OPS` run on a device tensor;
    (2) an op that would synchronise with these arguments: a boolean-mask index into a
    device tensor, ``repeat_interleave`` with device repeats and no ``output_size``,
    ``histc`` without a range, ``masked_fill`` with a device value tensor; (3) a copy
    from the host to the device: a host tensor meeting a device tensor in one op (on
    CUDA it would have had to be copied there first), ``Tensor.to(device)`` or
    ``.cuda()`` of a host tensor, ``torch.tensor(..., device=...)`` and ``new_tensor``
    of a device tensor; (4) a copy from the device to the host: ``.cpu()``,
    ``.tolist()``, ``.numpy()`` of a device tensor. The fused ops' Python bodies are
    checked too: they run under the guard as well. A function whose CPU path reads
    back where its CUDA path does not (:data:`AS_ON_CUDA`) runs as on CUDA.

    Out of its sight: a tensor made from NumPy (``torch.from_numpy`` is no torch
    function) counts as a device tensor, and so does state that stays on the host on
    CUDA too (the prototype-usage totals, which only the end of a usage window touches).
    """

    def __init__(self) -> None:
        super().__init__()
        self.origins: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> "host" | "number"
        self.dispatch = _SynchronisingOps(self)

    def kind(self, tensor: torch.Tensor) -> str:
        return self.origins.get(tensor, "device")

    def mark(self, result: object, origin: str) -> None:
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor):
                self.origins[leaf] = origin

    def __enter__(self):
        self.dispatch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.dispatch.__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and self.kind(source) == "device" and func in DEVICE_READS:
            raise HostSynchronisation(f"Tensor.{func.__name__} copies a device tensor to the host")
        if (
            source is not None
            and self.kind(source) == "host"
            and (func is torch.Tensor.cuda or (func is torch.Tensor.to and _names_a_device(args[1:], kwargs)))
        ):
            raise HostSynchronisation(f"Tensor.{func.__name__} copies a tensor made on the host to the device")
        if source is not None and self.kind(source) == "device" and func is torch.Tensor.new_tensor:
            raise HostSynchronisation("Tensor.new_tensor copies host data to the device")
        if func in FROM_HOST_DATA and kwargs.get("device") is not None:
            raise HostSynchronisation(f"torch.{func.__name__}(..., device=...) copies host data to the device")
        result = AS_ON_CUDA.get(func, func)(*args, **kwargs)
        if func in FACTORIES and kwargs.get("device") is None:
            self.mark(result, "host")
        return result


class _SynchronisingOps(TorchDispatchMode):
    """The aten-level half of :class:`NoHostSynchronisation`."""

    def __init__(self, guard: NoHostSynchronisation) -> None:
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self.guard.kind
        kinds = {kind(leaf) for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        if "device" in kinds:
            if "host" in kinds:
                raise HostSynchronisation(
                    f"{func} uses a tensor made on the host with device tensors: "
                    "on CUDA it is copied to the device first"
                )
            reason = SYNCHRONISING_OPS.get(func._schema.name) or _conditional_sync(func, args, kwargs, kind)
            if reason:
                raise HostSynchronisation(f"{func} on a device tensor {reason}")
        if func.namespace == "mper":  # run the fused op's Python body under the guard as well
            with self:
                result = func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        else:
            result = func(*args, **kwargs)
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            self.guard.mark(result, "number" if result.dim() == 0 else "host")
        elif kinds and "device" not in kinds:
            self.guard.mark(result, "host" if "host" in kinds else "number")
        return result


def _conditional_sync(func, args, kwargs, kind) -> str | None:
    """The reason an op waits for the device with these arguments, or None."""
    name = func._schema.name
    if name in INDEXING_OPS and any(
        isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in args[1]
    ):
        return "takes a boolean mask as index (nonzero sizes the selection)"
    if (
        name == "aten::repeat_interleave"
        and func._overloadname in ("Tensor", "self_Tensor")
        and kwargs.get("output_size") is None
    ):
        return "sums the repeats on the host (pass output_size)"
    if name == "aten::histc":
        low = args[2] if len(args) > 2 else kwargs.get("min", 0)
        high = args[3] if len(args) > 3 else kwargs.get("max", 0)
        if low == high:
            return "reads the input's min and max on the host (pass min < max)"
    if (
        name in ("aten::masked_fill", "aten::masked_fill_")
        and isinstance(args[2], torch.Tensor)
        and kind(args[2]) == "device"
    ):
        return "reads its value tensor on the host (pass a Python number)"
    return None


# the guard catches each kind of synchronisation, and lets host-side work through


def _device_state() -> torch.Tensor:
    return torch.arange(6.0).reshape(2, 3)  # made before the guard: on the device


def _label_checked_accumulate(x: torch.Tensor) -> object:
    labels = (x[:1] > 1).long().reshape(1, 1, 3)  # the voxels of a (1, 2, 1, 3) embedding
    assign = torch.zeros((1, 2, 1, 3), dtype=torch.int64, device=x.device)
    return proto_accumulate(x.reshape(1, 2, 1, 3), labels, assign, None, 2, 1, check_labels=True)


#: A call on a device tensor, and what the guard's message names.
SYNCHRONISING = {
    "item": (lambda x: x.sum().item(), "_local_scalar_dense"),
    "bool": (lambda x: bool((x > 2).any()), "_local_scalar_dense"),
    "int": (lambda x: int(x[0, 0]), "_local_scalar_dense"),
    "nonzero": (lambda x: torch.nonzero(x), "nonzero"),
    "where(cond)": (lambda x: torch.where(x > 2), "nonzero"),
    "boolean-mask index": (lambda x: x[x > 2], "aten.index.Tensor .* boolean mask"),
    "boolean-mask assignment": (lambda x: x.__setitem__(x > 2, 1.0), "index_put_.*boolean mask"),
    "masked_select": (lambda x: x.masked_select(x > 2), "masked_select"),
    "unique": (lambda x: torch.unique(x), "unique"),
    "bincount": (lambda x: torch.bincount(x.long().flatten(), minlength=8), "bincount"),
    "repeat_interleave": (lambda x: torch.repeat_interleave(x.long().flatten()), "output_size"),
    "histc": (lambda x: torch.histc(x), "histc"),
    "masked_fill with a tensor": (lambda x: x.masked_fill(x > 2, x.max()), "masked_fill"),
    "equal": (lambda x: torch.equal(x, x), "equal"),
    "multinomial": (lambda x: torch.multinomial(x.flatten() + 1, 1), "multinomial"),
    "tolist": (lambda x: x.tolist(), "tolist copies a device tensor to the host"),
    "cpu": (lambda x: x.cpu(), "cpu copies a device tensor to the host"),
    "host tensor moved": (lambda x: x + torch.ones(3).to(x.device), "Tensor.to copies a tensor made on the host"),
    "host tensor mixed in": (lambda x: x * torch.ones(2, 3), "aten.mul.Tensor uses a tensor made on the host"),
    "host tensor copied in": (
        lambda x: x.copy_(torch.zeros(2, 3)),
        "aten.copy_.default uses a tensor made on the host",
    ),
    "tensor(device=)": (lambda x: x + torch.tensor(2.0, device=x.device), r"torch.tensor\(..., device=...\)"),
    "new_tensor": (lambda x: torch.stack([x.sum(), x.new_tensor(3.0)]), "new_tensor"),
    "a fused op's body": (_label_checked_accumulate, r"is_nonzero.*\(in _check_ranges"),
}


@pytest.mark.parametrize("name", list(SYNCHRONISING))
def test_the_guard_fails_on_what_makes_the_host_wait_for_the_device(name):
    call, message = SYNCHRONISING[name]
    state = _device_state()
    with pytest.raises(HostSynchronisation, match=message), NoHostSynchronisation():
        call(state)


def test_the_guard_lets_host_side_work_and_device_only_work_through():
    state, generator = _device_state(), torch.Generator().manual_seed(0)
    with NoHostSynchronisation():
        corner = int(torch.randint(0, 3, (1,), generator=generator))  # drawn and read on the host
        state[:, corner:] = 0  # a Python number into device memory
        state += torch.full((), 2, device=state.device)
        state.masked_fill_(state > 4, 1.0)
        counts = torch.zeros(8, dtype=torch.int64, device=state.device)
        counts.index_add_(0, state.long().flatten(), torch.ones(6, dtype=torch.int64, device=state.device))
        repeats = torch.ones(6, dtype=torch.int64, device=state.device)
        torch.repeat_interleave(state.flatten(), repeats, output_size=6)
        one_hot = F.one_hot(state.long(), 8)  # the CPU path's range check is not CUDA's
        proto_accumulate(
            state.reshape(1, 2, 1, 3),
            (state[:1] > 2).long().reshape(1, 1, 3),
            torch.zeros((1, 2, 1, 3), dtype=torch.int64, device=state.device),
            None,
            2,
            1,
            check_labels=False,
        )
    assert torch.equal(counts, torch.bincount(state.long().flatten(), minlength=8))
    assert torch.equal(one_hot.argmax(-1), state.long())


# every recipe's steady-state steps, diagnostics on

#: The recipe switches at the values no preset takes (docs/method.md, "Training").
OTHER_SWITCHES = [
    "selftrain.teacher_mode=eval",
    "selftrain.ema_schedule=warmup",
    "selftrain.ema_scope=parameters",
    "selftrain.forward_passes=1",
    "selftrain.forward_order=labeled-surround-first",
    "selftrain.contrastive_reduction=mean",
    "prototypes.update_steps=combined",
    "prototypes.update_source=labeled",
    "prototypes.update_background=true",
    "losses.dice=per-sample-linear",
    "losses.dice_background=region",
    "pretrain.loss=whole-image",
]
RECIPES = {
    "acdc-paper": ("acdc", "paper", {}, []),
    "acdc-reference": ("acdc", "reference", {}, []),
    "acdc-bcp": ("acdc", "paper", {"baseline": "bcp"}, []),
    "acdc-labeled-only": ("acdc", "paper", {"baseline": "labeled-only"}, []),
    "acdc-other-switches": ("acdc", "paper", {}, OTHER_SWITCHES),
    "la-paper": ("la", "paper", {}, []),
    "la-reference": ("la", "reference", {}, []),
    "la-bcp": ("la", "paper", {"baseline": "bcp"}, []),
    "la-labeled-only": ("la", "paper", {"baseline": "labeled-only"}, []),
}
TINY = {
    "acdc": ["network.channels=[4, 8, 16, 32, 64]", "data.patch_size=[32, 32]"],
    "la": ["network.base_filters=2", "data.patch_size=[32, 32, 32]", "eval.stride=[16, 16, 16]"],
}


def recipe_trainer(tmp_path, recipe: str, device: str = "cpu") -> Trainer:
    """A self-training trainer (teacher, head with a random bank) of a tiny network,
    with every diagnostic on and a self-training long enough that no prototype-usage
    window closes (its read-back, once per window, is not a steady-state step)."""
    dataset, preset, overrides, switches = RECIPES[recipe]
    config = load_config(
        dataset,
        preset,
        {"device": device, "labeled": 1, **overrides},
        [
            *TINY[dataset],
            "data.batch_size=4",
            "data.labeled_batch_size=2",
            "selftrain.iterations=5000",
            "eval.pseudo_label_dice=true",
            "eval.teacher_dice=true",
            "prototypes.confidence_threshold=0.0",
            *switches,
        ],
    )
    trainer = Trainer(config, tmp_path, validate=lambda net: 0.5)
    trainer.teacher = create_teacher(trainer.student, config.selftrain.teacher_mode)
    trainer.head = trainer.new_head()
    bank = trainer.head.prototypes
    bank.copy_(torch.randn(bank.shape, generator=torch.Generator().manual_seed(3)))
    return trainer


def recipe_batch(dataset: str, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    spatial, classes = ((32, 32), 4) if dataset == "acdc" else ((32, 32, 32), 2)
    return {
        "image": torch.randn(4, 1, *spatial, generator=generator),
        "label": torch.randint(0, classes, (4, *spatial), generator=generator),
    }


STEPS = {
    "pretrain": lambda trainer, batch, iteration: supervised_step(trainer, batch, mix=True),
    "selftrain": selftrain.selftrain_step,
    "baseline": lambda trainer, batch, iteration: supervised_step(trainer, batch, mix=False),
}
RECIPE_STEPS = [
    (recipe, step)
    for recipe, (_, _, overrides, _) in RECIPES.items()
    for step in (["baseline"] if overrides.get("baseline") == "labeled-only" else ["pretrain", "selftrain"])
]


@pytest.mark.parametrize("recipe, step", RECIPE_STEPS)
def test_steady_state_steps_make_no_host_synchronisation(tmp_path, recipe, step):
    trainer = recipe_trainer(tmp_path, recipe)
    batches = [recipe_batch(RECIPES[recipe][0], seed) for seed in range(3)]  # the loader's: made outside the step
    STEPS[step](trainer, batches[0], 0)  # the first iteration creates state (momentum buffers, the usage window)
    with NoHostSynchronisation():
        losses = [STEPS[step](trainer, batch, iteration)["loss"] for iteration, batch in enumerate(batches[1:], 1)]
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses)


@pytest.mark.cuda
@pytest.mark.parametrize("recipe, step", RECIPE_STEPS)
def test_steady_state_steps_make_no_cuda_synchronisation(tmp_path, recipe, step):
    trainer = recipe_trainer(tmp_path, recipe, device="cuda")
    batches = [
        {key: value.cuda() for key, value in recipe_batch(RECIPES[recipe][0], seed).items()} for seed in range(3)
    ]
    STEPS[step](trainer, batches[0], 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for iteration, batch in enumerate(batches[1:], start=1):
            STEPS[step](trainer, batch, iteration)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_loss_that_turns_non_finite_between_reads_is_named_by_its_iteration(acdc_data, tmp_path, monkeypatch):
    after_optimizer_steps(monkeypatch, 2, fill_weights_with_nan)  # iteration 3's loss is NaN
    run_dir = tmp_path / "run"
    config = tiny_config(
        acdc_data, run_dir, "eval.log_interval=10", "eval.checkpoint_interval=10", "eval.val_interval=4"
    )  # read back first at iteration 4
    with pytest.raises(TrainingDiverged, match="pretrain iteration 3: the loss is nan"):
        pipeline.train(config)
    assert not (run_dir / "last.pt").exists() and not (run_dir / "pretrain_best.pt").exists()


def test_train_log_says_how_long_each_iteration_waited_for_data(acdc_data, tmp_path):
    run_dir = pipeline.train(tiny_config(acdc_data, tmp_path / "run", "eval.log_interval=2"))
    log = (run_dir / "train.log").read_text()
    assert log.count("ms for data per") >= 2


def test_a_window_reads_its_iterations_back_in_order_with_their_timing():
    window = ScalarWindow()
    window.add(1, {"loss": torch.tensor(0.5), "lr": 0.1})
    window.add(2, {"loss": torch.tensor(0.25), "lr": 0.05, "bank_update_voxels": torch.tensor(3)})
    window.data_wait, window.busy = 0.002, 0.010
    rows, timing = window.read()
    assert rows == [(1, {"loss": 0.5, "lr": 0.1}), (2, {"loss": 0.25, "lr": 0.05, "bank_update_voxels": 3.0})]
    assert timing["data_wait_ms"] == pytest.approx(1.0)
    assert 5.0 <= timing["iteration_ms"] < 1000.0
    assert window.read()[0] == [] and window.data_wait == 0.0
