"""The generic prompt set: tokenizing, positions, groups, subsets and clear errors."""

import pytest
import torch

from helpers.prompts import PromptSet, check_single_tokens, tokenize


def test_from_texts_right_pads_and_marks_end():
    ps = PromptSet.from_texts(
        ["When Mary and John went", "Hi there"],
        answers=[" Mary", " there"],
        wrong=[" John", " you"],
        positions={"first": [0, 0], "last_but_one": [-2, -2]},
        fields={"kind": ["ioi", "greeting"]},
    )
    assert ps.tokens.shape == (2, 5) and ps.lengths.tolist() == [5, 2]
    assert ps.tokens[1, int(ps.lengths[1]):].eq(50256).all()
    assert ps.positions["END"].tolist() == (ps.lengths - 1).tolist()
    assert ps.positions["last_but_one"][0] == ps.lengths[0] - 2
    assert ps.answers.shape == (2,) and ps.wrong.shape == (2,)


def test_single_token_answers_are_enforced():
    with pytest.raises(ValueError, match="must be one token"):
        PromptSet.from_texts(["The capital of France is"], answers=[" Parisianism"])


def test_position_outside_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="outside its"):
        PromptSet.from_texts(["a b c"], positions={"bad": [7]})


def test_empty_prompt_set_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptSet.from_texts([])


def test_unknown_position_name_lists_known_names():
    ps = PromptSet.from_texts(["a b c"])
    with pytest.raises(KeyError, match="END"):
        ps.position("S2")


def test_groups_and_subset_keep_per_prompt_fields_aligned():
    texts = ["one two", "three four five", "six", "seven eight nine ten"]
    ps = PromptSet.from_texts(texts, answers=torch.tensor([1, 2, 3, 4]),
                              fields={"g": ["a", "b", "a", "b"], "num": torch.tensor([10, 20, 30, 40])})
    groups = ps.groups("g")
    assert list(groups) == ["a", "b"] and groups["a"].tolist() == [0, 2]
    assert list(ps.groups(("g", "num"))) == [("a", 10), ("a", 30), ("b", 20), ("b", 40)]
    sub = ps.subset([2, 0])
    assert sub.prompts == ["six", "one two"]
    assert sub.answers.tolist() == [3, 1] and sub.fields["num"].tolist() == [30, 10]
    assert sub.tokens.shape[1] == int(sub.lengths.max()) < ps.tokens.shape[1]
    assert torch.equal(sub.tokens[1, :2], ps.tokens[0, :2])
    with pytest.raises(IndexError):
        ps.subset([4])


def test_check_single_tokens_reports_every_bad_word():
    ids = check_single_tokens(["Mary", "John"])
    assert len(set(ids.values())) == 2
    with pytest.raises(ValueError, match="Xylophonist"):
        check_single_tokens(["Mary", "Xylophonist"], what="names")
    with pytest.raises(ValueError, match="duplicate"):
        check_single_tokens(["Mary", "Mary"])
    assert check_single_tokens(["A"], leading_space=False)["A"] == 32


def test_tokenize_with_bos_shifts_everything_by_one():
    plain, n_plain = tokenize(["Hello world"])
    bos, n_bos = tokenize(["Hello world"], prepend_bos=True)
    assert bos[0, 0] == 50256 and torch.equal(bos[0, 1:], plain[0]) and n_bos[0] == n_plain[0] + 1


def test_check_single_tokens_ignores_the_bos_a_bridge_tokenizer_adds(small_stand_in):
    tokenizer = small_stand_in.tokenizer
    assert len(tokenizer.encode(" Mary")) == 2  # this tokenizer prepends BOS
    assert check_single_tokens(["Mary"], tokenizer) == check_single_tokens(["Mary"])
    with pytest.raises(ValueError, match="Xylophonist"):
        check_single_tokens(["Xylophonist"], tokenizer)
