"""Which earlier prompt a gate prompt copies its leading tokens from (llama_engine.weight_formats)."""

from llama_engine.weight_formats import shared_prefixes


def test_each_prompt_copies_the_longest_prefix_an_earlier_prompt_has_short_of_its_last_token():
    prompts = [[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 3, 9, 7], [5, 6], [1, 2], [1, 2, 3, 4]]
    assert shared_prefixes(prompts) == [(-1, 0), (0, 3), (1, 4), (-1, 0), (0, 1), (0, 3)]


def test_nothing_is_copied_without_a_common_prefix_or_from_a_later_prompt():
    assert shared_prefixes([[7], [7], [8, 1]]) == [(-1, 0), (-1, 0), (-1, 0)]
    assert shared_prefixes([]) == []
