"""Chat data: the packaged chatterbot corpus, user JSONL files, the grouped split, completion labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_doe.finetune.chat import (
    IGNORE_INDEX,
    chatterbot_conversations,
    encode_chat,
    read_jsonl,
    split_conversations,
)
from llm_doe.finetune.model import load_tokenizer
from llm_doe.schema import ConfigError, ModelConfig


@pytest.fixture(scope="module")
def corpus():
    return chatterbot_conversations()


def _key(conversation):
    return " ".join(conversation[0]["content"].lower().split())


def test_the_packaged_corpus_is_alternating_user_assistant_conversations(corpus):
    assert len(corpus) > 2000
    for conversation in corpus:
        assert [m["role"] for m in conversation] == ["user", "assistant"] * (len(conversation) // 2)
        assert all(m["content"].strip() == m["content"] and m["content"] for m in conversation)
    assert any(len(c) > 2 for c in corpus)  # multi-turn conversations are kept whole


def test_split_is_seeded_exact_and_keeps_each_prompt_in_one_split(corpus):
    splits = split_conversations(corpus, train_size=None, val_size=150, test_size=200, seed=7)
    assert (len(splits.val), len(splits._test)) == (150, 200)
    assert len(splits.train) + 350 == len(corpus)
    keys = [{_key(c) for c in part} for part in (splits.train, splits.val, splits._test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    again = split_conversations(corpus, train_size=300, val_size=150, test_size=200, seed=7)
    assert again._test == splits._test  # the test split depends on test_size and the seed alone
    assert len(again.train) == 300 and set(map(_key, again.train)) <= keys[0] | set(map(_key, again.train))
    other = split_conversations(corpus, train_size=None, val_size=150, test_size=200, seed=8)
    assert other._test != splits._test
    assert splits.test_reads == 0 and splits.test is splits._test and splits.test_reads == 1


def test_null_held_out_sizes_are_a_tenth_of_the_conversations(corpus):
    """data=jsonl's default (issue 22 A3): a small file of one's own splits without sizes given."""
    small = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(60)]
    splits = split_conversations(small, train_size=None, val_size=None, test_size=None, seed=0)
    assert (len(splits.train), len(splits.val), len(splits._test)) == (48, 6, 6)
    tiny = split_conversations(small[:8], train_size=None, val_size=None, test_size=None, seed=0)
    assert (len(tiny.val), len(tiny._test)) == (2, 2)  # at least 2
    big = split_conversations(corpus, train_size=None, val_size=None, test_size=3, seed=0)
    assert len(big.val) == min(200, round(len(corpus) / 10)) and len(big._test) == 3


def test_split_refuses_sizes_the_data_cannot_give(corpus):
    with pytest.raises(ConfigError, match="data.test_size: 5000 is more than"):
        split_conversations(corpus, train_size=None, val_size=10, test_size=5000, seed=0)


def test_jsonl_takes_both_layouts_and_renamed_fields(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}]},
             {"prompt": "2+2?", "response": "4"}, {}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n")
    conversations = read_jsonl(path)
    assert [m["role"] for m in conversations[0]] == ["system", "user", "assistant"]
    assert conversations[1] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({"question": "Why?", "answer": "Because."}) + "\n")
    assert read_jsonl(renamed, "question", "answer")[0][1]["content"] == "Because."


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "only a prompt"}', "renamed.jsonl:2: needs 'messages' or string fields 'prompt' and 'response' "
                                    "(missing: response"),
    ("not json", "renamed.jsonl:2: not JSON"),
    ('{"messages": [{"role": "user", "content": "no answer"}]}', "renamed.jsonl:2: the conversation has no "
                                                                 "assistant turn"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "renamed.jsonl:2: messages[0] needs a role"),
])
def test_a_bad_jsonl_line_is_refused_with_its_line_number(tmp_path, line, message):
    path = tmp_path / "renamed.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "response": "yes"}) + "\n" + line + "\n")
    with pytest.raises(ConfigError) as err:
        read_jsonl(path)
    assert err.value.key == "data.path" and message in err.value.message


def test_a_missing_jsonl_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_completion_labels_cover_the_answer_and_its_end_marker_only():
    """A tokenizer without a chat template (MiniLM's) gets ChatML; the labels are exactly the
    assistant's answer and the end-of-turn marker after it."""
    tokenizer, _ = load_tokenizer(ModelConfig())
    conversation = [{"role": "user", "content": "what can you eat"},
                    {"role": "assistant", "content": "ram and binary digits"}]
    encoded = encode_chat([conversation], tokenizer, 128)
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    answer = tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert answer.startswith("ram and binary digits") and "im _ end" in answer and "what can you eat" not in answer
    assert tokenizer.decode(ids).startswith("< | im _ start | > user what can you eat")
    everything = encode_chat([conversation], tokenizer, 128, loss_on="all")
    assert np.array_equal(everything.labels[0], everything.input_ids[0])
    assert encoded.label_tokens == int((labels != IGNORE_INDEX).sum()) < len(ids)


def test_an_answer_cut_off_by_max_length_drops_its_conversation(caplog):
    tokenizer, _ = load_tokenizer(ModelConfig())
    long_prompt = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "short"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    encoded = encode_chat([long_prompt, short], tokenizer, 32)
    assert len(encoded) == 1 and encoded.dropped == 1 and encoded.lengths.tolist() == [len(encoded.input_ids[0])]
    assert "1 of 2 conversations dropped" in caplog.text


SMOLLM2 = ModelConfig(kind="tiny_llama", tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct")
TURN = [{"role": "user", "content": "what can you eat"}, {"role": "assistant", "content": "ram and binary digits"}]


def _labelled(tokenizer, conversation=TURN):
    encoded = encode_chat([conversation], tokenizer, 128)
    ids, labels = encoded.input_ids[0], encoded.labels[0]
    return ids[labels != IGNORE_INDEX].tolist()


def _without_template(tmp_path, **special):
    """SmolLM2's tokenizer saved with no chat template (and ``special`` tokens changed)."""
    from transformers import AutoTokenizer

    tokenizer, _ = load_tokenizer(SMOLLM2)
    copy = AutoTokenizer.from_pretrained(tokenizer.name_or_path, **special)
    copy.chat_template = None
    copy.save_pretrained(tmp_path)
    copy = AutoTokenizer.from_pretrained(tmp_path)
    assert not copy.chat_template
    return copy


def test_the_answer_and_its_eos_are_labelled_not_the_newline_after_it():
    """ChatML ends a turn with <|im_end|> and a newline: the newline is the template's, not the
    answer's (TRL's completion-only losses leave it out too)."""
    tokenizer, _ = load_tokenizer(SMOLLM2)
    labelled = _labelled(tokenizer)
    assert tokenizer.decode(labelled) == "ram and binary digits<|im_end|>"
    assert labelled[-1] == tokenizer.eos_token_id
    two_turns = [*TURN, {"role": "user", "content": "and then"}, {"role": "assistant", "content": "more bits"}]
    labelled = _labelled(tokenizer, two_turns)
    assert tokenizer.decode(labelled) == "ram and binary digits<|im_end|>more bits<|im_end|>"


def test_the_fallback_template_ends_answers_with_the_tokenizers_own_eos(tmp_path):
    """A tokenizer with no template whose eos is not <|im_end|> still learns to stop: its eos ends
    each answer and is labelled."""
    tokenizer = _without_template(tmp_path, eos_token="<|endoftext|>")
    assert tokenizer.eos_token == "<|endoftext|>"
    labelled = _labelled(tokenizer)
    assert labelled[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labelled) == "ram and binary digits<|endoftext|>"


def test_a_templates_generation_markers_say_what_is_labelled(tmp_path):
    """A template that marks the assistant's tokens ({% generation %}) is taken at its word."""
    tokenizer = _without_template(tmp_path)
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>\\n' }}"
        "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    labelled = _labelled(tokenizer)
    assert tokenizer.decode(labelled) == "ram and binary digits<|im_end|>\n"  # the newline inside the markers


def test_an_answer_cut_by_max_length_is_counted_and_kept_or_dropped(caplog):
    """data.truncation=keep (the default) keeps a cut answer without its eos, counted and said in
    one line; drop drops its conversation, counted too."""
    tokenizer, _ = load_tokenizer(SMOLLM2)
    long_answer = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 60}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    kept = encode_chat([long_answer, short, short], tokenizer, 48)
    assert len(kept) == 3 and kept.cut == 1 and kept.dropped == 0
    assert len(kept.input_ids[0]) == 48 and tokenizer.eos_token_id not in kept.labels[0][kept.labels[0] >= 0]
    assert kept.labels[1][kept.labels[1] >= 0][-1] == tokenizer.eos_token_id  # a whole answer keeps its eos
    assert "1 of 3 conversations have an answer cut at data.max_length=48 tokens" in caplog.text
    caplog.clear()
    dropped = encode_chat([long_answer, short, short], tokenizer, 48, truncation="drop")
    assert len(dropped) == 2 and dropped.cut == 1 and dropped.conversations == [short, short]
    assert "1 of 3 conversations dropped: an answer cut at data.max_length=48 tokens (data.truncation=drop)" \
        in caplog.text
    whole = encode_chat([long_answer], tokenizer, 256)
    assert whole.cut == 0 and whole.labels[0][whole.labels[0] >= 0][-1] == tokenizer.eos_token_id
