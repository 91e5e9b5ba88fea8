"""The device harness: a CPU that pretends to be two devices, so device bugs show on CI.

The book runs where its readers run it: a Colab GPU (``cuda``), a Mac (``mps``), a laptop's
CPU. The project's machines have no accelerator, so a tensor left on the CPU beside weights
on the GPU, or ``.numpy()`` of a GPU tensor, would only crash on a reader's machine. Under
the harness the CPU plays both devices:

* a tensor is **on the accelerator** (reported as ``cuda:0``) when it was made by
  ``.to("cuda")`` / ``.cuda()`` / a factory call with ``device="cuda"`` (e.g.
  ``torch.zeros(3, device=model.cfg.device)``), is a parameter or buffer of a module moved
  there (``model.to("cuda")``; ``load_model`` builds the stand-in there), or was computed
  from such a tensor; every other tensor is on the ``cpu``. ``t.device`` and ``t.is_cuda``
  answer accordingly, so ``device=t.device`` works as on a GPU;
* an operation mixing the two raises :class:`DeviceMixError`, as CUDA would ("Expected all
  tensors to be on the same device"). As on CUDA, 0-dimensional CPU tensors may join
  accelerator tensors, and a CPU index may index an accelerator tensor;
* ``.numpy()`` (and ``np.asarray``) of an accelerator tensor raises, as on CUDA: call
  ``.cpu()`` first;
* the accelerator has no float64, as Apple's MPS has none: ``.double()`` of an accelerator
  tensor raises (move it to the CPU first);
* a random factory call with a CPU ``generator`` and ``device="cuda"`` raises, as on CUDA.

The computation itself runs on the CPU, so the numbers are the CPU's.

**The switch.** ``CASEBOOK_DEVICE_HARNESS=1`` in the environment makes ``load_model`` and
``setup_notebook`` turn the harness on for the rest of the process (a notebook's kernel), and
``device=None`` then picks the pretend ``cuda`` (``CASEBOOK_DEVICE_HARNESS=mps``: a pretend
Apple ``mps``; float64 is refused either way). ``tests/test_book.py`` builds the smoke book
with it, so every chapter runs under it in ``make test``. A chapter by hand::

    CASEBOOK_DEVICE_HARNESS=1 .venv/bin/python scripts/bench_notebooks.py --only 01_ioi

In a test or a script, as a context manager (or :func:`enable` for the rest of the
process)::

    from helpers.devices import DeviceHarness
    with DeviceHarness():
        model = load_model("gpt2-small", weights="random")   # on the pretend cuda
        model(tokens_on_cpu)    # fine: load_model's input rule moves them
        torch.zeros(3) + model.W_E[0, :3]   # DeviceMixError
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "HARNESS_ENV",
    "DeviceHarness",
    "DeviceMixError",
    "active_harness",
    "enable",
    "enable_from_env",
    "harness_requested",
    "on_accelerator",
]

HARNESS_ENV = "CASEBOOK_DEVICE_HARNESS"
_TAG = "_casebook_device_tag"
_ACTIVE: list["DeviceHarness"] = []


class DeviceMixError(RuntimeError):
    """What the device harness raises where a real accelerator would fail."""


def harness_requested() -> bool:
    """True when ``CASEBOOK_DEVICE_HARNESS`` asks for the harness (``1``, ``true``, ...)."""
    return os.environ.get(HARNESS_ENV, "").strip().lower() in {"1", "true", "yes", "on", "cuda", "mps"}


def active_harness() -> "DeviceHarness | None":
    """The harness in force, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def on_accelerator(t: torch.Tensor) -> bool:
    """Whether the harness counts ``t`` as on the accelerator."""
    return getattr(t, _TAG, False) is True


def enable(accelerator: str = "cuda") -> "DeviceHarness":
    """Turn the harness on for the rest of the process (a notebook's kernel); idempotent."""
    if _ACTIVE:
        return _ACTIVE[-1]
    harness = DeviceHarness(accelerator)
    harness.__enter__()
    return harness


def enable_from_env() -> "DeviceHarness | None":
    """:func:`enable` if ``CASEBOOK_DEVICE_HARNESS`` asks for it; else the active one or None."""
    if harness_requested():
        flavour = os.environ.get(HARNESS_ENV, "").strip().lower()
        return enable("mps" if flavour == "mps" else "cuda")
    return active_harness()


def _tag(t: Any, value: bool) -> None:
    if isinstance(t, torch.Tensor):
        if value:
            setattr(t, _TAG, True)
        elif getattr(t, _TAG, False):
            setattr(t, _TAG, False)


def _device_type(device: Any) -> str | None:
    if isinstance(device, torch.device):
        return device.type
    if isinstance(device, str):
        try:
            return torch.device(device).type
        except RuntimeError:
            return None
    if isinstance(device, int) and not isinstance(device, bool):  # .to(0)
        return "cuda"
    return None


def _tensors_in(args, kwargs) -> list:
    """The tensors among the arguments (and in lists, tuples and dicts two levels down)."""
    found = []

    def visit(value, depth):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif depth and isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth - 1)
        elif depth and isinstance(value, dict):
            for item in value.values():
                visit(item, depth - 1)

    for value in args:
        visit(value, 2)
    for value in kwargs.values():
        visit(value, 2)
    return found


_FREE = {  # operations that legitimately take tensors from both devices
    "to", "cpu", "cuda", "copy_", "_has_compatible_shallow_copy_type", "__set__",
    "is_set_to", "is_same_size", "__deepcopy__", "__reduce_ex__", "_make_subclass",
}


class DeviceHarness(TorchFunctionMode):
    """The CPU as two devices (``cpu`` and a pretend ``accelerator``); see the module doc."""

    def __init__(self, accelerator: str = "cuda"):
        super().__init__()
        if accelerator not in ("cuda", "mps"):
            raise ValueError(f"accelerator must be 'cuda' or 'mps', got {accelerator!r}")
        self.accelerator = accelerator
        self.device = torch.device(accelerator, 0)
        self._saved: dict = {}

    # -- entering and leaving: Parameter() and autograd.grad bypass torch functions -------
    def __enter__(self):
        param_new = torch.nn.Parameter.__new__
        grad = torch.autograd.grad

        def parameter_new(cls, data=None, requires_grad=True):
            out = param_new(cls, data, requires_grad)
            _tag(out, data is not None and on_accelerator(data))
            return out

        def autograd_grad(outputs, inputs, *args, **kwargs):
            result = grad(outputs, inputs, *args, **kwargs)
            ins = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
            for r, i in zip(result, ins):
                _tag(r, on_accelerator(i))
            return result

        self._saved = {"param_new": param_new, "grad": grad}
        torch.nn.Parameter.__new__ = staticmethod(parameter_new)
        torch.autograd.grad = autograd_grad
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.Parameter.__new__ = staticmethod(self._saved["param_new"])
        torch.autograd.grad = self._saved["grad"]
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    # -- helpers ----------------------------------------------------------------------------
    def _is_acc(self, device: Any) -> bool:
        return _device_type(device) in ("cuda", "mps")

    def _real(self, value: Any) -> Any:
        if isinstance(value, (torch.device, str, int)) and self._is_acc(value):
            return torch.device("cpu")
        return value

    def _mix_error(self, name: str, tensors) -> DeviceMixError:
        shapes = ", ".join(
            f"{tuple(t.shape)} on {self.device if on_accelerator(t) else 'cpu'}" for t in tensors
        )
        return DeviceMixError(
            f"Expected all tensors to be on the same device, but found at least two devices, "
            f"{self.device} and cpu! (device harness: {name} got {shapes}.) On a GPU this "
            f"line crashes: create the tensor with device=model.cfg.device, or move it with "
            f".to(model.cfg.device) (or .cpu() the other one)."
        )

    def _finish(self, name: str, out: Any, acc: bool) -> Any:
        def mark(t):
            if isinstance(t, torch.Tensor):
                _tag(t, acc)
                if acc and t.dtype == torch.float64:
                    raise DeviceMixError(
                        f"{name} made a float64 tensor on the accelerator: MPS (Apple silicon) "
                        f"has no float64 (device harness). Compute in float32, or move the "
                        f"tensor to the CPU first (.cpu().double())."
                    )
            return t

        if isinstance(out, torch.Tensor):
            mark(out)
        elif isinstance(out, (list, tuple)):
            for item in out:
                if isinstance(item, torch.Tensor):
                    mark(item)
                elif isinstance(item, (list, tuple)):
                    for sub in item:
                        mark(sub)
        return out

    # -- the mode ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        owner = getattr(getattr(func, "__self__", None), "__name__", "")
        if name == "__get__":  # a tensor property (shape, dtype, device, grad, data, ...)
            self_t = args[0]
            acc = on_accelerator(self_t)
            if owner == "device":
                return self.device if acc else func(*args, **kwargs)
            if owner == "is_cuda":
                return acc and self.accelerator == "cuda"
            if owner == "is_mps":
                return acc and self.accelerator == "mps"
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                _tag(out, acc)
            return out
        if name == "__set__":
            out = func(*args, **kwargs)
            if owner == "data":  # Module.to: param.data = param.to(device)
                _tag(args[0], on_accelerator(args[1]))
            return out
        if name in ("numpy", "__array__") and args and on_accelerator(args[0]):
            raise DeviceMixError(
                f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() "
                f"to copy the tensor to host memory first. (device harness: "
                f"{tuple(args[0].shape)} tensor)"
            )
        if name == "get_device" and args and on_accelerator(args[0]):
            return 0
        if name in ("to", "cpu", "cuda", "mps") and args and isinstance(args[0], torch.Tensor):
            return self._move(func, name, args, kwargs)
        if name == "Generator":
            return func(*args, **kwargs)

        tensors = _tensors_in(args, kwargs)
        big = [t for t in tensors if t.ndim > 0]
        acc_big = [on_accelerator(t) for t in big]
        if name == "__getitem__" or name == "__setitem__":
            self_acc = on_accelerator(args[0])
            others = [t for t in big[1:] if on_accelerator(t) != self_acc]
            if not self_acc and others:  # a CPU tensor indexed by / given accelerator tensors
                raise self._mix_error(name, [args[0], *others])
            return self._finish(name, func(*args, **kwargs), self_acc)
        if name not in _FREE and any(acc_big) and not all(acc_big):
            raise self._mix_error(name, big)
        if "device" in kwargs and kwargs["device"] is not None:
            acc = self._is_acc(kwargs["device"])
            kwargs = dict(kwargs, device=self._real(kwargs["device"]))
        else:
            acc = any(acc_big) if big else any(on_accelerator(t) for t in tensors)
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and acc != self._is_acc(generator.device):
            raise DeviceMixError(
                f"Expected a '{self.accelerator if acc else 'cpu'}' device type for generator "
                f"but found '{generator.device.type}' (device harness: {name}). Draw on the "
                f"generator's device, then move the result with .to(device)."
            )
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and on_accelerator(out) != acc and any(out is t for t in tensors):
            # e.g. torch.as_tensor(cpu_tensor, device="cuda") handed back its input: a real
            # move copies, and the input stays where it was
            out = out.clone()
        return self._finish(name, out, acc)

    def _move(self, func, name, args, kwargs):
        self_t = args[0]
        was = on_accelerator(self_t)
        if name == "cpu":
            target, call_args, call_kwargs = False, args, kwargs
        elif name in ("cuda", "mps"):
            target, call_args, call_kwargs = True, (self_t,), {}
            func = torch.Tensor.cpu
        else:  # to(device), to(dtype), to(other), to(device, dtype), to(device=...)
            target = was
            rest = list(args[1:])
            if rest and isinstance(rest[0], torch.Tensor):
                target = on_accelerator(rest[0])
                rest[0] = rest[0].dtype if rest[0].dtype != self_t.dtype else self_t.dtype
                rest = [r for r in rest if not isinstance(r, bool)][:1]
            device = kwargs.get("device")
            if rest and not isinstance(rest[0], (torch.dtype, bool)):
                device, rest[0] = rest[0], self._real(rest[0])
            if device is not None:
                target = self._is_acc(device)
            call_args = (self_t, *rest)
            call_kwargs = {k: self._real(v) for k, v in kwargs.items()}
        out = func(*call_args, **call_kwargs)
        if out is self_t and target != was:
            out = self_t.clone()  # a real move copies: the original stays where it was
        return self._finish(name, out, target)
