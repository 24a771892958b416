"""Instruct chat prompts: token-identical to Meta's chat_completion (inst) and dialog_prompt_tokens (step)."""

from __future__ import annotations

import random

import pytest

from tests.fixtures_tokenizer import stdlib_snippets


def _dialogs(count: int, *, step: bool, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    texts = [t[:300] for t in stdlib_snippets(4 * count, seed=seed + 1)] + ["", "  ", " padded  ", "\n\nx\n"]
    dialogs = []
    for _ in range(count):
        turns = []
        if rng.random() < 0.5:
            turns.append({"role": "system", "content": rng.choice(texts)})
        for k in range(2 * rng.randrange(0, 3) + 1):  # ends with the user
            message = {"role": "user" if k % 2 == 0 else "assistant", "content": rng.choice(texts)}
            if step and message["role"] == "assistant" and rng.random() < 0.7:
                message["destination"] = "user"
            turns.append(message)
        if not step and turns[0]["role"] == "system" and len(turns) == 1:
            continue
        dialogs.append(turns)
    return dialogs


def test_inst_chat_matches_meta(inst):
    tok, ref = inst
    dialogs = _dialogs(60, step=False)
    for dialog in dialogs:
        ids = tok.apply_chat_template(dialog, add_generation_prompt=True, tokenize=True, allow_special_tags=True)
        assert ids["input_ids"] == ref.chat_inst(dialog)
    batched = tok.apply_chat_template(dialogs, add_generation_prompt=True, return_dict=False, allow_special_tags=True)
    assert batched == [ref.chat_inst(d) for d in dialogs]


def test_step_chat_matches_meta(step):
    tok, ref = step
    for dialog in _dialogs(60, step=True):
        ids = tok.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False, allow_special_tags=True)
        assert ids == ref.chat_step(dialog)
    assert ref.step_id in ids and ids[0] == ref.bos_id


def test_system_message_is_merged_into_the_first_user_turn(inst):
    tok, ref = inst
    dialog = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "  sort a list "}]
    # Meta strips the merged text, so the user's own leading spaces survive after the system block.
    expected = ref.encode("[INST] <<SYS>>\nAnswer in Python.\n<</SYS>>\n\n  sort a list [/INST]", bos=True)
    assert tok.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False) == expected


@pytest.mark.parametrize("tag", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<step>"])
def test_special_tags_are_refused_unless_allowed(inst, tag):
    from codellama_hf.errors import UserInputError

    tok, ref = inst
    dialog = [{"role": "user", "content": f"what does {tag} mean?"}]
    with pytest.raises(UserInputError, match="allow_special_tags=True"):
        tok.apply_chat_template(dialog, add_generation_prompt=True)
    ids = tok.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False, allow_special_tags=True)
    assert ids == ref.chat_inst(dialog)
    assert ids.count(tok.bos_token_id) == 1 and tok.eos_token_id not in ids


def test_non_instruct_tokenizer_refuses_to_chat(tiny_vocabs, load_tokenizer):
    from codellama_hf.errors import UserInputError

    tok, _ = load_tokenizer(tiny_vocabs["fim"])
    with pytest.raises(UserInputError, match="chat_format 'none'.*CodeLlama-7b-Instruct"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)


def test_bad_roles_are_refused(inst, step):
    from codellama_hf.errors import UserInputError

    for tok, _ in (inst, step):
        with pytest.raises(UserInputError, match="roles"):
            tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        with pytest.raises(UserInputError, match="last message"):
            tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                    add_generation_prompt=True)


def test_finished_dialog_without_generation_prompt(inst):
    tok, ref = inst
    dialog = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    expected = ref.encode("[INST] a [/INST] b ", bos=True, eos=True)
    assert tok.apply_chat_template(dialog, add_generation_prompt=False, return_dict=False) == expected


@pytest.mark.parametrize("fmt", ["inst", "step"])
def test_rendered_template_tokenizes_to_the_same_ids_in_stock_transformers(inst, step, fmt, tmp_path):
    """The saved Jinja template, rendered and tokenized the stock way (special tokens matched), gives Meta's ids."""
    from transformers import TokenizersBackend

    from codellama_hf.tokenization import save_llama_format_tokenizer

    tok, _ = inst if fmt == "inst" else step
    save_llama_format_tokenizer(tok, tmp_path)
    stock = TokenizersBackend.from_pretrained(tmp_path)
    for dialog in _dialogs(40, step=fmt == "step", seed=3):
        if any(s in m["content"] for m in dialog for s in ("<s>", "</s>", "<step>")):
            continue
        rendered = tok.apply_chat_template(dialog, add_generation_prompt=True, tokenize=False, allow_special_tags=True)
        expected = tok.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False,
                                           allow_special_tags=True)
        assert stock(rendered, add_special_tokens=False)["input_ids"] == expected
        assert stock.apply_chat_template(dialog, add_generation_prompt=True, return_dict=False) == expected


def test_continue_final_message_leaves_the_answer_open_as_meta_encodes_it(inst, step):
    """No trailing space, no EOS (inst) or `<step>` (step) after the last answer: the model continues it."""
    tok, ref = inst
    one = [{"role": "user", "content": " sort a list "}, {"role": "assistant", "content": " def sort(xs): "}]
    assert tok.apply_chat_template(one, continue_final_message=True, return_dict=False) == ref.encode(
        "[INST] sort a list [/INST] def sort(xs):", bos=True)
    few_shot = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "The answer is"}]
    assert tok.apply_chat_template(few_shot, continue_final_message=True, return_dict=False) == (
        ref.encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n1+1? [/INST] 2 ", bos=True, eos=True)
        + ref.encode("[INST] 2+2? [/INST] The answer is", bos=True))
    empty = one[:1] + [{"role": "assistant", "content": ""}]
    assert tok.apply_chat_template(empty, continue_final_message=True, return_dict=False) == ref.chat_inst(one[:1])
    tok, ref = step
    dialog = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, ", "destination": "user"}]
    assert tok.apply_chat_template(dialog, continue_final_message=True, return_dict=False) == (
        [ref.bos_id] + ref.encode(" Source: system") + [ref.step_id] + ref.encode(" Source: user")
        + ref.encode("\n\n hi") + [ref.step_id] + ref.encode(" Source: assistant\nDestination: user")
        + ref.encode("\n\n Hello,"))


def test_continue_final_message_needs_an_assistant_message_last(inst, step):
    from codellama_hf.errors import UserInputError

    for tok, _ in (inst, step):
        with pytest.raises(UserInputError, match="continue_final_message=True needs an assistant message last"):
            tok.apply_chat_template([{"role": "user", "content": "a"}], continue_final_message=True)
        with pytest.raises(UserInputError, match="pass one"):
            tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                    continue_final_message=True, add_generation_prompt=True)


@pytest.mark.parametrize("fmt", ["inst", "step"])
def test_its_own_chat_template_gives_meta_ids_and_another_is_refused(inst, step, fmt, tmp_path):
    """vLLM passes the folder's template explicitly (its own string, or chat_template.jinja read from the folder):
    that is Meta's format, so the ids are Meta's; a different template is still refused, never ignored."""
    from codellama_hf import CodeLlamaTokenizer
    from codellama_hf.errors import UserInputError

    tok, ref = inst if fmt == "inst" else step
    tok.save_pretrained(tmp_path)
    saved = CodeLlamaTokenizer.from_pretrained(tmp_path)
    jinja = (tmp_path / "chat_template.jinja").read_text(encoding="utf-8")
    meta = ref.chat_inst if fmt == "inst" else ref.chat_step
    for dialog in _dialogs(10, step=fmt == "step", seed=5):
        for t, template in [(tok, tok.chat_template), (saved, jinja), (saved, saved.chat_template)]:
            ids = t.apply_chat_template(dialog, chat_template=template, add_generation_prompt=True,
                                        return_dict=False, allow_special_tags=True)
            assert ids == meta(dialog)
    other = (step if fmt == "inst" else inst)[0].chat_template
    for t, template in [(tok, other), (saved, jinja + "{{ '!' }}"), (tok, "{{ messages[0]['content'] }}")]:
        with pytest.raises(UserInputError, match="chat_template not supported"):
            t.apply_chat_template([{"role": "user", "content": "x"}], chat_template=template)
