"""Bad input gets one clear paragraph that names the value and the way out."""

import pytest

from helpers import (
    CasebookError,
    ModelUnavailableError,
    UnknownModelError,
    Scorecard,
    Reference,
    load_model,
)
from helpers.display import attention_view


def _one_paragraph(message: str) -> None:
    assert "\n" not in message and len(message) < 900


def test_unknown_model_lists_supported_names():
    with pytest.raises(UnknownModelError) as err:
        load_model("gpt3-small", weights="random")
    message = str(err.value)
    _one_paragraph(message)
    assert "'gpt3-small'" in message
    for name in ("gpt2-small", "gpt2-medium"):
        assert name in message


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"weights": "randm"}, "'randm'"),
        ({"weights": "random", "seed": -1}, "seed=-1"),
        ({"weights": "random", "seed": 1.5}, "seed=1.5"),
        ({"weights": "random", "device": "cuda:7"}, "'cuda:7'"),
        ({"weights": "random", "device": "toaster"}, "'toaster'"),
    ],
)
def test_impossible_parameters_are_named(kwargs, named):
    with pytest.raises(CasebookError) as err:
        load_model("gpt2-small", **kwargs)
    _one_paragraph(str(err.value))
    assert named in str(err.value)


def test_pretrained_offline_says_what_to_do():
    with pytest.raises(ModelUnavailableError) as err:
        load_model("gpt2-small")  # conftest: HF_HUB_OFFLINE=1, empty cache
    message = str(err.value)
    _one_paragraph(message)
    assert "gpt2-small" in message and "openai-community/gpt2" in message
    assert "HF_HUB_OFFLINE" in message  # the cause
    assert "weights='random'" in message and "cache" in message  # the ways out
    # No chained traceback wall: nothing attached, or the hub's exception explicitly suppressed.
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_pretrained_with_unreachable_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(ModelUnavailableError) as err:
        load_model("gpt2-medium")
    message = str(err.value)
    _one_paragraph(message)
    assert "gpt2-medium" in message and "unreachable" in message and "127.0.0.1:9" in message


def test_circuitsvis_mode_is_checked():
    import torch

    with pytest.raises(ValueError, match="'offline'"):
        attention_view(["a", "b"], torch.ones(1, 2, 2) / 2, [(0, 0)], mode="offline")


def test_scorecard_rejects_negative_tolerance():
    card = Scorecard("t", stand_in=False)
    with pytest.raises(ValueError, match="-1"):
        card.band("x", Reference(1.0, "src"), 1.0, -1, null=0)
