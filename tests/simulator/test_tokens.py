import pytest

from simulator.tokens import (
    CHARS_PER_TOKEN,
    UNKNOWN_PIECE,
    block_hashes,
    count_tokens,
    id_piece,
    render_chat,
    token_ids,
    token_pieces,
)


def test_four_characters_per_token():
    assert CHARS_PER_TOKEN == 4
    assert [count_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_block_hashes_chain_so_equal_hashes_mean_equal_prefixes():
    block_chars = 16 * CHARS_PER_TOKEN
    shared = "s" * (2 * block_chars)
    a = block_hashes(shared + "a" * block_chars + "tail", 16)
    b = block_hashes(shared + "b" * block_chars, 16)
    assert len(a) == 3  # the partial trailing block is not hashed
    assert a[:2] == b[:2] and a[2] != b[2]
    # Same block content at a different position hashes differently (the parent is in the hash).
    assert block_hashes("x" * block_chars * 2, 16)[1] != block_hashes("x" * block_chars, 16)[0]
    assert block_hashes(shared, 16, salt="m1") != block_hashes(shared, 16, salt="m2")


def test_chat_rendering_is_chatml_with_generation_prompt():
    text = render_chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    )
    assert (
        text
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"content": "x"}], "messages\\[0\\] must be an object with a string 'role'"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
        ([{"role": "user", "content": 5}], "must be a string or a list"),
    ],
)
def test_chat_rendering_rejects_what_it_cannot_tokenize(messages, error):
    with pytest.raises(ValueError, match=error):
        render_chat(messages)


def test_token_ids_round_trip_ascii_and_mark_other_pieces_unknown():
    text = 'Routing {"a": 1}\n\tend~'
    assert "".join(id_piece(i) for i in token_ids(text)) == text
    assert len(token_ids(text)) == count_tokens(text) == len(token_pieces(text))
    ids = token_ids("café au lait")
    assert [id_piece(i) for i in ids] == [UNKNOWN_PIECE, " au ", "lait"]
    assert ids == token_ids("café au lait")  # deterministic, also for hashed pieces
    assert max(token_ids("\x7f\x7f\x7f\x7f" + "ü" * 400)) < 2**29
