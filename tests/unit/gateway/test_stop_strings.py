"""Stop strings matched on text across token boundaries."""

from gateway.chat.stop_strings import StopMatcher


def feed(stops, pieces):
    m = StopMatcher(stops)
    out = [m.push(p) for p in pieces]
    return out, m


def test_stop_across_pieces_is_cut_and_not_returned():
    out, m = feed(["END"], ["Hello E", "N", "D and more"])
    assert out == ["Hello ", "", ""] and m.matched == "END"
    assert m.flush() == ""


def test_partial_match_is_held_then_released_when_it_is_not_a_stop():
    out, m = feed(["END"], ["Hello E", "N", "jOY"])
    assert out == ["Hello ", "", "ENjOY"] and m.matched is None


def test_partial_match_at_the_end_of_generation_is_text():
    out, m = feed(["\n\n"], ["line\n"])
    assert out == ["line"]
    assert m.flush() == "\n"


def test_earliest_of_several_stops_wins():
    out, m = feed(["world", "lo"], ["hello world"])
    assert out == ["hel"] and m.matched == "lo"


def test_no_stops_passes_everything_through():
    out, m = feed([], ["a", "b"])
    assert out == ["a", "b"] and m.flush() == ""


def test_nothing_after_a_match():
    m = StopMatcher(["x"])
    assert m.push("ax") == "a"
    assert m.push("more") == ""
