"""Streamed text: one piece per token, partial characters and possible stop strings held back."""

from disrouter_jax.cascade.serving.streaming import TextStream, held_back


def decode(tokens) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


def pieces_of(text: str, stops=(), content=None) -> list[str]:
    stream = TextStream(decode, stops)
    pieces = [p for b in text.encode() for p in stream.feed([b])]
    return pieces + stream.finish(text if content is None else content)


def test_pieces_join_to_the_content_and_wait_for_whole_characters():
    assert pieces_of("ab") == ["a", "b"]
    assert pieces_of("é!") == ["é", "!"]  # two bytes, one piece once the character is whole


def test_a_possible_stop_string_is_held_back_until_decided():
    stream = TextStream(decode, ["END"])
    assert stream.feed(b"ab") == ["a", "b"]
    assert stream.feed(b"E") == [] and stream.feed(b"N") == []  # could be "END"
    assert stream.feed(b"x") == ["ENx"]  # it was not
    assert stream.feed(b"END more") == [] and stream.finish("abENx") == []  # cut at the stop
    assert pieces_of("abENDx", ["END"], content="ab") == ["a", "b"]
    assert held_back("xxEN", ["END", "N"]) == 2 and held_back("abc", ["END"]) == 0
